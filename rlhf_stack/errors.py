"""One exception family for input the user can fix, and for training that stopped cleanly.

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


class NonFiniteError(RlhfStackError):
    """A NaN or inf in a step's loss, gradients, rewards or advantages, found before its optimizer step
    under `on_nonfinite: stop`. Nothing was saved after the bad step: a re-run resumes from the last
    good checkpoint, which the message names."""


class RewardFunctionError(RlhfStackError):
    """A reward source raised, or returned something other than one number per response. The
    message names the source, the response (and, from PPO, the step, the prompt and the last good
    checkpoint); `source` and `index` (the response's row in the batch, or None) say it in code."""

    def __init__(self, message: str, source: str = "", index: int | None = None) -> None:
        super().__init__(message)
        self.source, self.index = source, index
