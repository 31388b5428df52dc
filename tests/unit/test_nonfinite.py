"""The checks behind `on_nonfinite` and the reward sources' output rules, on plain tensors and
functions (no model): what is found, and what the one-line messages say."""

import json
import math

import pytest
import torch

from rlhf_stack.errors import RewardFunctionError
from rlhf_stack.evaluation import report
from rlhf_stack.nonfinite import first_nonfinite, nonfinite_grad, optimizer_groups, stop_message
from rlhf_stack.ppo.rewards import CombinedReward, checked_scores

PROMPTS = ["p0", "p1", "p2"]
RESPONSES = ["fine", "x" * 200, "ok"]


def test_first_nonfinite_finds_nan_and_inf_in_order():
    ok, nan, inf = torch.zeros(3), torch.tensor([0.0, math.nan]), torch.tensor([[1.0], [-math.inf]])
    assert first_nonfinite([("a", ok), ("b", None), ("c", ok.long())]) is None
    assert first_nonfinite([("a", ok), ("b", inf), ("c", nan)]) == "b"
    assert first_nonfinite([]) is None


def test_nonfinite_grad_names_the_group_and_the_parameter():
    policy, value = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    model = torch.nn.ModuleDict({"policy": policy, "value": value})
    optimizer = torch.optim.AdamW([{"params": list(policy.parameters())}, {"params": list(value.parameters())}])
    groups = optimizer_groups(optimizer, model, ("policy", "value"))
    assert [label for label, _ in groups] == ["policy", "value"]
    assert nonfinite_grad(groups) is None  # no gradients yet
    (policy(torch.ones(1, 2)).sum() + value(torch.ones(1, 2)).sum()).backward()
    assert nonfinite_grad(groups) is None
    value.bias.grad[0] = math.inf
    assert nonfinite_grad(groups) == "grad of param group 'value' (first: value.bias)"
    assert nonfinite_grad(optimizer_groups(optimizer, model)) == "grad of param group '1' (first: value.bias)"


def test_stop_message_is_one_line_and_says_how_to_go_on(tmp_path):
    text = stop_message("sft", 7, "loss", tmp_path / "checkpoint-6", "train.on_nonfinite")
    assert text == (f"sft step 7: non-finite loss; stopped before that update. Nothing was saved after it; last "
                    f"good checkpoint: {tmp_path / 'checkpoint-6'} (a re-run resumes from it). To drop such "
                    "updates instead, set train.on_nonfinite: skip_step")
    assert "a re-run starts from the beginning" in stop_message("ppo", 1, "rewards", None, "on_nonfinite")


def test_checked_scores_accepts_numbers_and_arrays_and_passes_nan_on():
    import numpy as np

    assert checked_scores("f", lambda p, r: [1, 2.5, True], PROMPTS, RESPONSES).tolist() == [1.0, 2.5, 1.0]
    assert checked_scores("f", lambda p, r: np.array([[1.0], [2.0], [3.0]]), PROMPTS, RESPONSES).tolist() == [1, 2, 3]
    assert checked_scores("f", lambda p, r: torch.tensor([0.5, 0.5, 0.5]), PROMPTS, RESPONSES).dtype == torch.float32
    assert math.isnan(checked_scores("f", lambda p, r: [0.0, math.nan, 1.0], PROMPTS, RESPONSES)[1])


@pytest.mark.parametrize(("fn", "message", "index"), [
    (lambda p, r: [1.0, 2.0], "reward 'f' returned 2 values for 3 responses", None),
    (lambda p, r: None, "reward 'f' returned a NoneType; expected a list of 3 numbers, one per response", None),
    (lambda p, r: {"a": 1}, "reward 'f' returned a dict; expected a list of 3 numbers", None),
    (lambda p, r: [1.0, "2", 3.0], "reward 'f' returned '2' (a str, not a number) for response 1 of the batch: 'xxx", 1),
    (lambda p, r: [1.0, None, 3.0], "reward 'f' returned None (a NoneType, not a number) for response 1", 1),
    (lambda p, r: torch.ones(2, 2), "reward 'f' returned an array of shape (2, 2) and dtype torch.float32 for 3", None),
])
def test_checked_scores_refuses_what_is_not_one_number_per_response(fn, message, index):
    with pytest.raises(RewardFunctionError) as caught:
        checked_scores("f", fn, PROMPTS, RESPONSES)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert caught.value.source == "f" and caught.value.index == index


def test_a_raising_function_is_named_with_the_response_that_makes_it_raise():
    def picky(prompts, responses):
        return [1.0 / (len(r) < 100) for r in responses]  # ZeroDivisionError on the long response

    with pytest.raises(RewardFunctionError) as caught:
        CombinedReward([("len", 1.0, lambda p, r: [1.0] * len(r)), ("picky", 2.0, picky)])(PROMPTS, RESPONSES)
    text = str(caught.value)
    assert text.startswith("reward 'picky' raised ZeroDivisionError: float division by zero at ")
    assert f"{__file__}:" in text  # the line inside picky
    assert text.endswith(f"on response 1 of the batch: '{'x' * 80}…'")  # cut at 80 characters
    assert caught.value.index == 1 and isinstance(caught.value.__cause__, ZeroDivisionError)

    def flaky(prompts, responses):
        if len(responses) > 1:
            raise RuntimeError("rate limited\nretry later")
        return [0.0]

    with pytest.raises(RewardFunctionError, match=r"raised RuntimeError: rate limited retry later at .*on a batch of 3 "
                                                  r"responses \(no response alone makes it raise\)$"):
        checked_scores("flaky", flaky, PROMPTS, RESPONSES)


def test_report_has_a_line_for_each_stage_that_skipped_updates(tmp_path):
    stages = {"sft": {"status": "done", "metrics": {"eval_loss": 1.0, "skipped_updates": 0}},
              "ppo": {"status": "done", "metrics": {"score": 0.4, "skipped_updates": 3}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": stages}))
    text = report.write_report(tmp_path).read_text()
    assert ("- ppo: **3** optimizer updates skipped for a NaN or inf in the loss, gradients, rewards or advantages "
            "(`on_nonfinite: skip_step`; which step and what: the stage's log)") in text
    assert "- sft:" not in text
