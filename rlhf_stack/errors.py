"""One exception family for what the user can fix (input, the machine it runs on: a full disk), and
for training that stopped cleanly.

The CLI prints `error: <message>` for any `RlhfStackError` and exits 2 without a traceback, and
so it does for an OSError that says the disk is full (`disk_full`); everything else is a bug and
keeps its traceback.
"""

import errno


class RlhfStackError(Exception):
    """Something the user can fix: a config key, a data row, a model path, disk space."""


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


class CheckpointWriteError(RlhfStackError):
    """A checkpoint could not be written (disk full, permissions): the message names the path, the
    space it needs and the space free; the previous checkpoint is intact (`checkpointing.py`)."""


def disk_full(exc: OSError) -> RlhfStackError | None:
    """The user's error for an OSError meaning the disk is full (ENOSPC, EDQUOT), else None.
    Checkpoint writes say more (`CheckpointWriteError`); this covers every other write (logs)."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return RlhfStackError(f"could not write {exc.filename or 'a file'}: {exc.strerror}. Free space (or move "
                          "output_dir to a larger disk) and re-run: the stage resumes from its newest whole checkpoint.")


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
