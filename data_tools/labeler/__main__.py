"""`python -m data_tools.labeler ...` = `rlhf-stack label ...` (used by tests and benchmarks
to start the server as its own process)."""

import sys

from data_tools.labeler.cli import app
from rlhf_stack.errors import RlhfStackError


def main() -> None:
    try:
        app(prog_name="python -m data_tools.labeler")
    except RlhfStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
