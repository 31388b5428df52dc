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


def test_the_recipe_sets_threads_for_every_stage_process():
    from rlhf_stack.errors import ConfigError
    from rlhf_stack.pipeline.runner import launch_env, load_recipe

    recipe, _ = load_recipe({"torch_threads": 1})
    assert recipe.torch_threads == 1
    assert launch_env(recipe.torch_threads)["OMP_NUM_THREADS"] == "1"  # each accelerate process
    with pytest.raises(ConfigError, match="torch_threads"):
        load_recipe({"torch_threads": 0})
