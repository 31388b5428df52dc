"""One stage in its own process: what the runner starts under `accelerate launch`.

    accelerate launch --config_file recipes/accelerate/ddp.yaml -m rlhf_stack.pipeline.launch sft RUN_DIR/configs/sft.yaml 42

The config file is the resolved stage config the runner wrote (references replaced, output_dir set);
the last argument is the recipe seed, set before the stage starts as the in-process path does.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from rlhf_stack.config import load_config
    from rlhf_stack.errors import RlhfStackError
    from rlhf_stack.pipeline.runner import seed_everything
    from rlhf_stack.pipeline.stages import STAGES

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in STAGES:
        print(f"usage: python -m rlhf_stack.pipeline.launch {{{','.join(STAGES)}}} CONFIG.yaml SEED", file=sys.stderr)
        return 2
    spec = STAGES[args[0]]
    try:
        cfg = load_config(spec.config_type(), args[1])
        seed_everything(int(args[2]))
        spec.entry()(cfg)
    except RlhfStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
