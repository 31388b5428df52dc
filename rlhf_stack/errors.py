"""One exception family for input the user can fix.

The CLI prints `error: <message>` for any `RlhfStackError` and exits 2 without a traceback;
everything else is a bug and keeps its traceback.
"""


class RlhfStackError(Exception):
    """Bad input the user can fix: a config key, a data row, a model path."""


class ConfigError(RlhfStackError):
    """A recipe or config file is malformed: unknown key, wrong type, missing field."""


class DataError(RlhfStackError):
    """A data file has rows that break its format; the message lists `path:line: problem`."""


class ModelNotFoundError(RlhfStackError):
    """A model id/path/alias could not be resolved locally or from the Hub."""


class KeyPathError(ValueError):
    """A config validator's error about a key below the field it validates (`peft.method` under
    `model`): `config.format_validation_error` then names the full key path and its YAML line."""

    def __init__(self, subkey: str, message: str) -> None:
        super().__init__(message)
        self.subkey = subkey
        self.message = message
