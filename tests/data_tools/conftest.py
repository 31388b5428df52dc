"""Fixtures for the data tools tests."""

import pytest
from data_tools_cases import SOURCE_FIXTURES


@pytest.fixture
def fixture_path():
    """fixture_path("hh_rlhf.jsonl") -> the source-format fixture file."""
    return lambda name: SOURCE_FIXTURES / name
