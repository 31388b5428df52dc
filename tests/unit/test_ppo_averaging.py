"""`PolicyAverage` (`PPOConfig.policy_ema`) against values computed by hand."""

import pytest
import torch

from rlhf_stack.ppo.averaging import PolicyAverage


def params(*values):
    return [torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)) for v in values]


def named(*tensors):
    return {f"w{i}": t for i, t in enumerate(tensors)}


def test_average_follows_the_weights_with_the_decay():
    a, b = params([0.0, 4.0], [2.0])
    average = PolicyAverage(named(a, b), decay=0.75)
    with torch.no_grad():
        a.copy_(torch.tensor([4.0, 0.0]))
        b.copy_(torch.tensor([6.0]))
    average.update()  # 0.75 * start + 0.25 * now
    assert average.shadow[0].tolist() == [1.0, 3.0] and average.shadow[1].tolist() == [3.0]
    with torch.no_grad():
        a.copy_(torch.tensor([8.0, 8.0]))
    average.update()
    assert average.shadow[0].tolist() == [0.75 * 1.0 + 0.25 * 8.0, 0.75 * 3.0 + 0.25 * 8.0]
    assert average.shadow[1].tolist() == [0.75 * 3.0 + 0.25 * 6.0]
    assert a.tolist() == [8.0, 8.0]  # updating the average never touches the weights


def test_decay_zero_is_the_last_weights_and_copy_to_policy_writes_the_average():
    (a,) = params([1.0, 2.0])
    average = PolicyAverage(named(a), decay=0.0)
    with torch.no_grad():
        a.add_(5.0)
    average.update()
    assert average.shadow[0].tolist() == [6.0, 7.0]

    (w,) = params([0.0])
    average = PolicyAverage(named(w), decay=0.5)
    with torch.no_grad():
        w.fill_(2.0)
    average.update()
    assert average.shadow[0].item() == 1.0
    assert w.item() == 2.0  # the weights stay theirs until the average is copied in
    average.copy_to_policy()
    assert w.item() == 1.0


def test_state_round_trip_and_mismatch():
    a, b = params([1.0], [2.0, 3.0])
    average = PolicyAverage(named(a, b), decay=0.9)
    with torch.no_grad():
        a.fill_(11.0)
    average.update()
    state = {k: v.clone() for k, v in average.state_dict().items()}

    fresh = PolicyAverage(named(*params([0.0], [0.0, 0.0])), decay=0.9)
    fresh.load_state_dict(state)
    for got, want in zip(fresh.shadow, average.shadow, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert list(state) == ["w0", "w1"]  # by name, as the checkpoint's trainable weights
    with pytest.raises(ValueError, match="1 tensors, the policy 2"):
        fresh.load_state_dict({"w0": torch.zeros(1)})

