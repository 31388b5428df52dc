"""Fixtures for the labeling tool's tests (helpers live in labeler_helpers.py)."""

from pathlib import Path

import pytest
from labeler_helpers import sample_items, write_candidates


@pytest.fixture
def candidates_file(tmp_path) -> Path:
    return write_candidates(tmp_path / "candidates.jsonl", sample_items())
