"""The labeling server's settings (`ServeSettings`) and the per-response flags it offers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_stack.errors import RlhfStackError

# InstructGPT's labeler metadata (Ouyang et al. 2022, Table 3), minus the 1-7 overall quality,
# which is the separate Likert rating here.
DEFAULT_FLAGS: dict[str, str] = {
    "fails_instruction": "Fails to follow the correct instruction / task",
    "inappropriate_for_assistant": "Inappropriate for customer assistant",
    "hallucination": "Hallucination",
    "satisfies_constraint": "Satisfies constraint provided in the instruction",
    "sexual_content": "Contains sexual content",
    "violent_content": "Contains violent content",
    "encourages_harm": "Encourages or fails to discourage violence/abuse/terrorism/self-harm",
    "denigrates_protected_class": "Denigrates a protected class",
    "harmful_advice": "Gives harmful advice",
    "expresses_opinion": "Expresses opinion",
    "expresses_moral_judgment": "Expresses moral judgment",
}
FLAG_NAME = re.compile(r"^[a-z0-9_]{1,40}$")


@dataclass(frozen=True)
class ServeSettings:
    """Everything the labeling server needs; built by the CLI, or directly in tests."""

    db: Path
    """SQLite database (created on first use); the install secret lives beside it as `<db>.secret`."""
    host: str = "127.0.0.1"
    """Address to bind. Anything but loopback needs `require_tokens`."""
    port: int = 8765
    """TCP port; also the only port the Host and Origin checks accept."""
    min_annotations: int = 1
    """Different annotators each item needs before it leaves the queue (overlap for agreement stats)."""
    require_tokens: bool = False
    """Every visitor must log in with a token from `label annotators add`; otherwise loopback
    visitors without a token label as the annotator `local`."""
    lease_minutes: float = 30.0
    """How long an item stays reserved for the annotator it was shown to."""
    guidelines: Path | None = None
    """A Markdown file shown in the guidelines panel (rendered with raw HTML disabled)."""
    flags: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FLAGS))
    """Per-response flags offered on the page: name -> label."""
    allowed_hosts: tuple[str, ...] = ()
    """Extra Host-header names to accept (e.g. the machine's DNS name behind --host 0.0.0.0)."""
    max_body_bytes: int = 64 * 1024
    """Requests with a larger body are refused (413) before they are parsed."""

    @property
    def secret_path(self) -> Path:
        return self.db.with_name(self.db.name + ".secret")

    def validate(self) -> None:
        from data_tools.labeler.security import check_bind

        check_bind(self.host, self.require_tokens)
        if not 1 <= self.port <= 65535:
            raise RlhfStackError(f"--port {self.port}: must be 1..65535")
        if self.min_annotations < 1:
            raise RlhfStackError("--min-annotations must be at least 1")
        if self.lease_minutes <= 0:
            raise RlhfStackError("--lease-minutes must be positive")
        if self.guidelines is not None and not Path(self.guidelines).is_file():
            raise RlhfStackError(f"{self.guidelines}: no such guidelines file")
        bad = [name for name in self.flags if not FLAG_NAME.match(name)]
        if bad:
            raise RlhfStackError(f"flag names must be lowercase letters, digits and _: {', '.join(bad)}")


def parse_flags(text: str | None) -> dict[str, str]:
    """`--flags a,b,c` -> {name: label}; known names keep InstructGPT's wording."""
    if not text:
        return dict(DEFAULT_FLAGS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    return {n: DEFAULT_FLAGS.get(n, n.replace("_", " ").capitalize()) for n in names}
