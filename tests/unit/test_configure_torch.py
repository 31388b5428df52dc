"""modeling.configure_torch: the one place that sets CPU threads and float32 matmul precision."""

import pytest
import torch

from rlhf_stack.modeling import configure_torch


def test_sets_threads_and_reports_what_is_in_effect():
    before = torch.get_num_threads()
    try:
        state = configure_torch(1)
        assert state["threads"] == torch.get_num_threads() == 1
        cuda = torch.cuda.is_available()
        assert state["dtype"] == ("bfloat16" if cuda else "float32")
        assert state["device"].startswith("cuda" if cuda else "cpu")
        assert state["float32_matmul_precision"] == torch.get_float32_matmul_precision()
        if cuda:
            assert state["float32_matmul_precision"] == "high"
        assert configure_torch(None)["threads"] == 1  # None keeps what is set
    finally:
        torch.set_num_threads(before)


def test_rejects_fewer_than_one_thread():
    with pytest.raises(ValueError, match="threads"):
        configure_torch(0)
