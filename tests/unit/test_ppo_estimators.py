"""Hand-computed checks of rlhf_stack.ppo.estimators (the advantage estimators), the prompt layout
their groups rely on (data.step_prompt_indices) and PPOConfig's checks of the new settings.

Every expected value is written out with its arithmetic in a comment; the code under test is the
code the trainer runs.
"""

import math

import pytest
import torch

from rlhf_stack.config import load_config
from rlhf_stack.errors import ConfigError
from rlhf_stack.ppo import estimators as E
from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.data import IndexStream, step_prompt_indices


def close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual.float(), expected, atol=atol, rtol=1e-5)


# --- group baselines on sequence rewards -----------------------------------------------------


def test_rloo_leaves_each_sample_out_of_its_own_baseline():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 8.0])  # k = 3: groups (1, 2, 3) and (5, 5, 8)
    # group 1, sum 6: baselines ((6-1)/2, (6-2)/2, (6-3)/2) = (2.5, 2, 1.5) -> A = (-1.5, 0, 1.5)
    # group 2, sum 18: baselines (13/2, 13/2, 10/2) = (6.5, 6.5, 5) -> A = (-1.5, -1.5, 3)
    close(E.rloo_advantages(rewards, 3), [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0])
    # = k/(k-1) * (R - group mean): group 2 mean 6 -> 1.5 * (-1, -1, 2)
    # k = 2: each sample's baseline is its one sibling: (1-2, 2-1), (3-5, 5-3), (5-8, 8-5)
    close(E.rloo_advantages(rewards, 2), [-1.0, 1.0, -2.0, 2.0, -3.0, 3.0])


def test_grpo_normalises_within_each_group():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])  # k = 2
    # (1, 3): mean 2, unbiased std sqrt((1 + 1) / 1) = sqrt 2   -> (-1, 1) / (sqrt 2 + 1e-4)
    # (2, 2): std 0                                            -> (0, 0) (no NaN)
    # (0, 4): mean 2, std sqrt((4 + 4) / 1) = 2 sqrt 2           -> (-2, 2) / (2 sqrt 2 + 1e-4)
    s2 = math.sqrt(2.0)
    close(E.group_normalized_advantages(rewards, 2),
          [-1 / (s2 + 1e-4), 1 / (s2 + 1e-4), 0.0, 0.0, -2 / (2 * s2 + 1e-4), 2 / (2 * s2 + 1e-4)])
    # k = 3, group (1, 2, 6): mean 3, deviations (-2, -1, 3), unbiased var (4 + 1 + 9) / 2 = 7
    s7 = math.sqrt(7.0)
    close(E.group_normalized_advantages(torch.tensor([1.0, 2.0, 6.0]), 3),
          [-2 / (s7 + 1e-4), -1 / (s7 + 1e-4), 3 / (s7 + 1e-4)])
    # eps is the argument's: with eps = 1, (1, 3) -> (-1, 1) / (sqrt 2 + 1)
    close(E.group_normalized_advantages(torch.tensor([1.0, 3.0]), 2, eps=1.0), [-1 / (s2 + 1), 1 / (s2 + 1)])


def test_reinforce_baseline_centres_per_group_and_scales_by_the_batch():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])  # k = 2, the same rewards as the GRPO test
    # minus group means (2, 2, 2): c = (-1, 1, 0, 0, -2, 2), mean 0
    # batch unbiased std: sqrt((1 + 1 + 0 + 0 + 4 + 4) / 5) = sqrt 2 -> A = c / sqrt 2
    # (GRPO gave both nonzero groups size 1/sqrt 2; here the wider group keeps its larger spread)
    s2 = math.sqrt(2.0)
    close(E.reinforce_baseline_advantages(rewards, 2), [-1 / s2, 1 / s2, 0.0, 0.0, -2 / s2, 2 / s2])
    # k = 3, groups (0, 3, 6) and (1, 1, 4): c = (-3, 0, 3, -1, -1, 2), mean 0,
    # squares 9 + 0 + 9 + 1 + 1 + 4 = 24, unbiased var 24 / 5 = 4.8
    s = math.sqrt(4.8)
    close(E.reinforce_baseline_advantages(torch.tensor([0.0, 3.0, 6.0, 1.0, 1.0, 4.0]), 3),
          [-3 / s, 0.0, 3 / s, -1 / s, -1 / s, 2 / s])


def test_best_of_k_marks_each_groups_best_sample_only():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 8.0])
    # k = 3: groups (1, 2, 3) and (5, 5, 8): the best are 3 and 8
    close(E.best_of_k_advantages(rewards, 3), [0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    # k = 2: (1, 2), (3, 5), (5, 8): the second of each
    close(E.best_of_k_advantages(rewards, 2), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    # a tie goes to the first of the tied samples; negative rewards still have a best
    close(E.best_of_k_advantages(torch.tensor([2.0, 2.0, -3.0, -1.0]), 2), [1.0, 0.0, 0.0, 1.0])


def test_winner_rows_are_the_rows_with_advantage_one():
    # per-token advantages as step 4 gives them: 1 on a winner's real tokens, 0 at its padding
    advantages = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert E.winner_rows(advantages).tolist() == [1, 2]
    assert E.trains_on_winners("best_of_k") and not any(E.trains_on_winners(n) for n in ("gae", "rloo", "grpo"))


@pytest.mark.parametrize("baseline", list(E.GROUP_ESTIMATORS.values()))
def test_group_baselines_need_whole_groups_of_two_or_more(baseline):
    with pytest.raises(ValueError, match="k >= 2"):
        baseline(torch.tensor([1.0, 2.0, 3.0]), 2)  # 3 rollouts are not whole groups of 2
    with pytest.raises(ValueError, match="k >= 2"):
        baseline(torch.tensor([1.0, 2.0]), 1)  # one sample per prompt has nothing to compare with


# --- per-token rewards -> advantages, as step 4 runs them ---------------------------------------


def test_critic_free_advantages_use_the_kl_penalised_sequence_reward_on_every_token():
    scores = torch.tensor([1.0, 0.0])
    kl = torch.tensor([[0.5, 1.0, 0.5], [2.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = PF.kl_penalized_rewards(scores, kl * mask, mask, kl_coef=0.1)  # step 3, as in the trainer
    # sequence rewards: 1 - 0.1 * (0.5 + 1 + 0.5) = 0.8;  0 - 0.1 * (2 + 0) = -0.2 (the 9 is padding)
    # RLOO, k = 2: 0.8 - (-0.2) = 1.0 and -0.2 - 0.8 = -1.0, on every real token, 0 at padding
    advantages, returns = E.sequence_advantages(rewards, mask, 2, E.rloo_advantages)
    close(advantages, [[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    assert returns is None  # nothing to regress a value function on
    # garbage in the padded reward position is ignored: only real tokens sum into R
    garbage = rewards + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 50.0]])
    close(E.sequence_advantages(garbage, mask, 2, E.rloo_advantages)[0], advantages)


def test_advantage_estimator_picks_each_estimator_once():
    scores = torch.tensor([1.0, 0.0, 3.0, 1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    rewards = PF.kl_penalized_rewards(scores, torch.zeros(4, 2), mask, kl_coef=0.1)
    values = torch.tensor([[0.5, 0.2], [0.1, 0.0], [0.3, 0.3], [0.0, 1.0]])
    settings = {"gamma": 1.0, "gae_lambda": 0.95, "whiten": True, "samples_per_prompt": 2}
    assert set(E.ESTIMATORS) == {"gae", "rloo", "grpo", "reinforce_baseline", "best_of_k"}
    # gae = functional.gae, then whitening (today's step 4, unchanged); whiten=False keeps it raw
    want_adv, want_ret = PF.gae(rewards, values, mask, 1.0, 0.95)
    got_adv, got_ret = E.advantage_estimator("gae", **settings)(rewards, values, mask)
    close(got_adv, PF.masked_whiten(want_adv, mask))
    close(got_ret, want_ret)
    raw_adv, _ = E.advantage_estimator("gae", **{**settings, "whiten": False})(rewards, values, mask)
    close(raw_adv, want_adv)
    # critic-free: sequence rewards (1, 0, 3, 1), groups (1, 0) and (3, 1); values are not read
    #   rloo: (1 - 0, 0 - 1, 3 - 1, 1 - 3) = (1, -1, 2, -2)
    #   grpo: (1, 0): mean 0.5, std sqrt(0.25 + 0.25) = sqrt 0.5 -> +-0.5 / (sqrt 0.5 + 1e-4) = +-0.707007
    #         (3, 1): mean 2, std sqrt(1 + 1) = sqrt 2          -> +-1 / (sqrt 2 + 1e-4)     = +-0.707057
    #   reinforce_baseline: c = (0.5, -0.5, 1, -1), batch std sqrt(2.5 / 3) -> c / 0.912871
    #   best_of_k: the first of each group is its best -> (1, 0, 1, 0)
    for name, per_sequence in [("rloo", [1.0, -1.0, 2.0, -2.0]), ("best_of_k", [1.0, 0.0, 1.0, 0.0]),
                               ("grpo", [0.5 / (0.5**0.5 + 1e-4), -0.5 / (0.5**0.5 + 1e-4),
                                         1 / (2**0.5 + 1e-4), -1 / (2**0.5 + 1e-4)]),
                               ("reinforce_baseline", [x / math.sqrt(2.5 / 3) for x in (0.5, -0.5, 1.0, -1.0)])]:
        advantages, returns = E.advantage_estimator(name, **settings)(rewards, None, mask)
        close(advantages, torch.tensor(per_sequence).unsqueeze(1) * mask, atol=1e-5)
        assert returns is None
    assert E.uses_value_model("gae") and not any(E.uses_value_model(n) for n in E.GROUP_ESTIMATORS)


# --- the prompt layout the groups rely on ------------------------------------------------------


def test_step_prompt_indices_repeat_each_prompt_in_adjacent_rows():
    stream = IndexStream(10, seed=5)
    order = stream.take(0, 10)
    # step 2, 2 processes, rank 1, 2 prompts a step: stream positions ((2-1)*2 + 1) * 2 = 6 and 7
    got = step_prompt_indices(stream, step=2, world=2, rank=1, prompts_per_step=2, samples_per_prompt=3)
    assert got == [order[6]] * 3 + [order[7]] * 3
    # samples_per_prompt = 1 is the layout before it existed: take(((s-1)*world + r) * b, b)
    for step, rank in [(1, 0), (3, 1)]:
        assert step_prompt_indices(stream, step, 2, rank, 4, 1) == stream.take(((step - 1) * 2 + rank) * 4, 4)


# --- config checks ---------------------------------------------------------------------------


def ppo_config(**overrides):
    from rlhf_stack.ppo import PPOConfig

    return load_config(PPOConfig, {"policy": {"name_or_path": "m"}, "prompts": {"path": "p.jsonl"}, **overrides})


def test_config_defaults_and_derived_values():
    cfg = ppo_config()
    assert (cfg.advantage_estimator, cfg.samples_per_prompt, cfg.loss_aggregation, cfg.value_warmup_steps) == \
        ("gae", 1, "token_mean", 0)
    assert cfg.uses_value_model and cfg.prompts_per_step == cfg.batch_size
    assert cfg.update_batch_size == cfg.batch_size and cfg.updates_per_step == 2 * (16 // 8)
    cfg = ppo_config(advantage_estimator="grpo", samples_per_prompt=4, batch_size=16)
    assert not cfg.uses_value_model and cfg.prompts_per_step == 4 and cfg.update_batch_size == 16
    # best_of_k trains on the 32 / 4 = 8 winners: 2 epochs x 8 / 4 = 4 updates a step
    cfg = ppo_config(advantage_estimator="best_of_k", samples_per_prompt=4, batch_size=32, mini_batch_size=4)
    assert not cfg.uses_value_model and cfg.update_batch_size == 8 and cfg.updates_per_step == 4


def test_default_learning_rate_follows_the_tuning_method():
    assert ppo_config(policy={"name_or_path": "m", "tuning": "full"}).learning_rate == 1e-5
    assert ppo_config().learning_rate == 5e-4  # ModelConfig's default tuning is lora
    assert ppo_config(policy={"name_or_path": "m", "tuning": "lora"}, learning_rate=2e-4).learning_rate == 2e-4
    assert ppo_config(policy={"name_or_path": "m", "tuning": "lora"}).model_dump()["learning_rate"] == 5e-4


def test_config_errors_name_the_estimator_settings():
    with pytest.raises(ConfigError, match=r"multiple of samples_per_prompt \(3\)"):
        ppo_config(batch_size=16, samples_per_prompt=3)
    for name in ("rloo", "grpo", "reinforce_baseline", "best_of_k"):
        with pytest.raises(ConfigError, match=f"{name} compares the responses to one prompt.*samples_per_prompt >= 2"):
            ppo_config(advantage_estimator=name)
    with pytest.raises(ConfigError, match="value_init, value_warmup_steps: advantage_estimator rloo builds no value"):
        ppo_config(advantage_estimator="rloo", samples_per_prompt=2, value_init="rm", value_warmup_steps=2)
    with pytest.raises(ConfigError, match=r"the winners best_of_k trains on, \(4\) must be a multiple of "
                                          r"mini_batch_size \(8\)"):
        ppo_config(advantage_estimator="best_of_k", samples_per_prompt=4, batch_size=16, mini_batch_size=8)
    with pytest.raises(ConfigError, match=r"value_warmup_steps \(5\) must be less than steps \(5\)"):
        ppo_config(steps=5, value_warmup_steps=5)
    with pytest.raises(ConfigError, match="advantage_estimator"):
        ppo_config(advantage_estimator="ppo")
    with pytest.raises(ConfigError, match="loss_aggregation"):
        ppo_config(loss_aggregation="sum")
    assert ppo_config(samples_per_prompt=4, batch_size=16).samples_per_prompt == 4  # gae may sample k too
