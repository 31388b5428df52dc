"""The pipeline: one recipe -> the stages in order, checkpoints handed forward, then the report.

Where to look:
- `stages.py`    the stage registry: name -> config class, function, finished-marker, references;
- `runner.py`    `Recipe`, `run_recipe`: compose the stages, skip and resume;
- `staleness.py` the rule that decides whether a stage is reused, resumed or run afresh;
- `manifest.py`  RUN_DIR/manifest.json, the run lock, atomic writes;
- `layout.py`    every file name of a run directory;
- `launch.py`    one stage in its own process (what `accelerate launch` starts).
"""

from importlib import import_module

_EXPORTS = {"Recipe": "rlhf_stack.pipeline.runner", "run_recipe": "rlhf_stack.pipeline.runner",
            "RunResult": "rlhf_stack.pipeline.runner", "load_recipe": "rlhf_stack.pipeline.runner"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_stack.pipeline' has no attribute {name!r}")
