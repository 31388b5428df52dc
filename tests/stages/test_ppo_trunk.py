"""The frozen trunk (ppo/trunk.py): blocks below every adapter run once per rollout, same results."""

import json

import pytest
import torch

from rlhf_stack.config import load_config
from rlhf_stack.ppo import PPOConfig, train_ppo
from rlhf_stack.ppo.assembly import build_actor_critic
from rlhf_stack.ppo.rollout import left_pad
from rlhf_stack.ppo.setup import policy_tokenizer
from tests.conftest import assert_same_passes, stage3_passes

pytestmark = pytest.mark.slow


def config(tiny_model_dir, prompts_file, tmp_path, **overrides) -> PPOConfig:
    # The tiny model has 2 blocks: adapters on the last one leave one frozen block below them.
    raw = {"policy": {"name_or_path": str(tiny_model_dir), "tuning": "lora",
                      "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "last_n_layers": 1}},
           "prompts": {"path": str(prompts_file), "eval_fraction": 0.0}, "output_dir": str(tmp_path / "ppo"),
           "steps": 3, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 6, "learning_rate": 1e-2,
           "progress_bar": False, "save_every_steps": None, "seed": 3}
    raw.update(overrides)
    return load_config(PPOConfig, raw)


def word_count(prompts, responses):
    return [float(len(r.split())) for r in responses]


@pytest.mark.parametrize(("trunk", "packed", "attention"),
                         [(True, True, "sdpa"), (True, True, "eager"), (True, False, "sdpa"), (False, True, "sdpa"),
                          (False, True, "eager")])
def test_packed_and_trunk_passes_equal_padded_full_passes(tiny_model_dir, prompts_file, tmp_path, trunk, packed,
                                                          attention):
    """The rollout's and the update's passes, above the trunk or over every block, packed (`flat.py`:
    one row, the shared start once, heads at the used outputs only; the mask boolean for sdpa,
    additive for eager attention) or padded, equal padded passes over every block: log-probs,
    entropy, values, the ptx loss, and the gradients of all of them."""
    cfg = config(tiny_model_dir, prompts_file, tmp_path)
    tokenizer = policy_tokenizer(cfg)
    model, _ = build_actor_critic(cfg, tokenizer, torch.device("cpu"))
    model.policy.get_base_model().set_attn_implementation(attention)
    with torch.no_grad():  # make every adapter differ from zero, so a wrong adapter would show
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    query_ids, query_mask = left_pad([[5, 6, 7, 8], [5, 6, 9]], tokenizer.pad_token_id, torch.device("cpu"))
    assert model.use_trunk(query_ids, query_mask) == 1  # block 0 has no adapter, block 1 has all of them
    frozen = model.trunk

    def passes(with_trunk: bool, with_packing: bool):
        model.trunk = frozen if with_trunk else None
        return stage3_passes(model, tokenizer.pad_token_id, with_packing)

    assert_same_passes(passes(trunk, packed), passes(False, False))


def test_packing_shares_the_start_and_drops_padding():
    """`flat.pack` on a hand-made batch: which tokens the packed row holds, in which order, at which
    positions, and what each may attend."""
    from rlhf_stack.ppo.flat import response_packing

    # two rows [prompt | response], prompt left-padded: tokens 1 2 3 | 7 8 and 1 2 | 9 (0 = padding)
    input_ids = torch.tensor([[1, 2, 3, 7, 8], [0, 1, 2, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    packing = response_packing(input_ids, mask, n_response=2)
    # the passes read columns 0-3; used: the outputs predicting each response token (row 0: cols 2, 3;
    # row 1: col 2). The rows share "1", not "1 2": row 1's first used output is at its position 1.
    assert input_ids[:, :-1].reshape(-1)[packing.take].tolist() == [1, 2, 3, 7, 2]
    assert packing.positions.tolist() == [[0, 1, 2, 3, 1]]
    assert packing.out.tolist() == [2, 3, 4] and packing.rows.tolist() == [0, 0, 1] and packing.cols.tolist() == [2, 3, 2]
    allowed = packing.mask[0, 0].long().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0],
                       [1, 0, 0, 0, 1]]  # row 1's "2" sees the shared "1" and itself, not row 0's tokens
    assert packing.scatter(torch.tensor([1.0, 2.0, 3.0]), (2, 2), offset=2).tolist() == [[1.0, 2.0], [3.0, 0.0]]


@pytest.mark.parametrize("unpadded", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_trunk_recorded_while_sampling_equals_a_trunk_pass(tiny_model_dir, prompts_file, tmp_path, group, unpadded,
                                                           monkeypatch):
    """The trunk's output kept from sampling (the prompt pass, then each decoding step) equals a
    trunk pass over the finished sequences wherever the mask keeps: with the prompt pass as
    `prefill.py` plans it (shared start once, each distinct prompt's rest unpadded) and as one
    padded pass (each prompt once when group > 1)."""
    from rlhf_stack.ppo import rollout
    from rlhf_stack.ppo.prefill import plan_prompts
    from rlhf_stack.ppo.rollout import generate, generation_config, truncate_at_eos
    from rlhf_stack.ppo.trunk import sampled_hidden

    cfg = config(tiny_model_dir, prompts_file, tmp_path, max_new_tokens=8)
    tokenizer = policy_tokenizer(cfg)
    model, _ = build_actor_critic(cfg, tokenizer, torch.device("cpu"))
    prompts = [[5, 6, 7, 8, 11], [5, 6, 7, 8, 11], [5, 6, 9, 10], [5, 6, 9, 10]]  # a shared start: 5, 6
    query_ids, query_mask = left_pad(prompts, tokenizer.pad_token_id, torch.device("cpu"))
    assert model.use_trunk(query_ids, query_mask) == 1
    plan = plan_prompts(model.policy, query_ids, query_mask, group) if unpadded else None
    if unpadded:
        assert plan.prefix == [5, 6] and plan.rests == (
            [[7, 8], [9]] if group > 1 else [[7, 8], [7, 8], [9], [9]])
        assert plan.n_chunks == 2  # the prefix pass, then one pass over the rests
    else:
        monkeypatch.setattr(rollout, "plan_prompts", lambda *args: None)
    torch.manual_seed(0)
    with model.trunk.record() as chunks:
        raw = generate(model.policy, query_ids, query_mask, generation_config(cfg, tokenizer), group=group, plan=plan)
    if not unpadded:
        assert chunks[0].shape[:2] == ((2, 4) if group > 1 else (4, 5))  # the prompt pass: each prompt once
    response_ids, response_mask, _ = truncate_at_eos(raw, tokenizer.eos_token_id, tokenizer.pad_token_id)
    input_ids = torch.cat([query_ids, response_ids], 1)
    mask = torch.cat([query_mask, response_mask.long()], 1)
    passed = model.trunk_hidden(input_ids, mask)
    recorded = sampled_hidden(chunks, 4, input_ids.shape[1] - 1, plan)
    assert recorded.shape == passed.shape and response_ids.shape[1] > 1
    keep = mask[:, :-1].bool()
    torch.testing.assert_close(recorded[keep], passed[keep], atol=1e-5, rtol=1e-5)


def test_ppo_with_and_without_the_trunk_learn_the_same(tiny_model_dir, prompts_file, corpus_file, tmp_path):
    runs = {}
    for use in (True, False):  # PPO-ptx too: corpus rows' trunk outputs are cached across steps
        cfg = config(tiny_model_dir, prompts_file, tmp_path / str(use), cache_frozen_trunk=use, ptx_coef=0.5,
                     ptx_data={"path": str(corpus_file), "eval_fraction": 0.0}, ptx_max_length=16)
        result = train_ppo(cfg, reward_fns=[word_count])
        log = [json.loads(line) for line in (tmp_path / str(use) / "ppo" / "logs" / "ppo_log.jsonl").read_text().splitlines()]
        runs[use] = (result.metrics, log)
    assert runs[True][0]["models"]["trunk_blocks"] == 1 and runs[False][0]["models"]["trunk_blocks"] == 0
    for with_trunk, without in zip(runs[True][1], runs[False][1], strict=True):
        assert with_trunk["score"] == pytest.approx(without["score"], abs=1e-6)  # same samples
        for key in ("kl", "policy_loss", "value_loss", "approx_kl", "ptx_loss"):
            assert with_trunk[key] == pytest.approx(without[key], abs=1e-4, rel=1e-3), key


def test_ptx_rows_are_cached_once_and_only_when_the_corpus_fits():
    from types import SimpleNamespace

    from rlhf_stack.ppo.data import PtxBatches

    calls = []

    class FakeTrunk:  # hidden state of a token = its id, in 3 channels
        def hidden(self, ids, mask):
            calls.append(ids.shape[0])
            return ids[..., None].float().expand(*ids.shape, 3).clone()

    acc = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    rows = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
    ptx = PtxBatches(rows, batch_size=2, micro_per_step=2, pad_id=0, seed=0)
    seen = []
    for step in (1, 2, 3):
        for micro in (0, 1):
            ids, mask, labels, hidden = ptx.batch(step, micro, acc, FakeTrunk())
            assert torch.equal(hidden[..., 0], ids.float() * mask)  # each row's own output, 0 on padding
            seen.append(ids)
    assert sum(calls) == len(rows)  # every row went through the trunk exactly once in 12 draws
    small = PtxBatches(rows, batch_size=2, micro_per_step=2, pad_id=0, seed=0, cache_bytes=16)
    assert small.batch(1, 0, acc, FakeTrunk())[3] is None  # 10 tokens x 3 floats x 4 bytes > 16
    assert small.batch(1, 1, acc, FakeTrunk())[3] is None and small._hidden is None




def test_prefetch_computes_a_steps_new_corpus_rows_in_one_pass():
    """`prefetch(step)` runs the trunk once over the rows the step's micro-batches will draw and it
    lacks; the step's batches then run no trunk pass and get what they get without it."""
    from types import SimpleNamespace

    from rlhf_stack.ppo.data import PtxBatches

    class FakeTrunk:  # hidden state of a token = its id, in 3 channels; counts the rows it ran
        def __init__(self):
            self.calls = []

        def hidden(self, ids, mask):
            self.calls.append(ids.shape[0])
            return ids[..., None].float().expand(*ids.shape, 3).clone()

    acc = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    rows = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], [11, 12], [13]]
    prefetched = PtxBatches(rows, batch_size=2, micro_per_step=2, pad_id=0, seed=0)
    lazy = PtxBatches(rows, batch_size=2, micro_per_step=2, pad_id=0, seed=0)
    ahead, during = FakeTrunk(), FakeTrunk()
    for step in (1, 2, 3):
        before = len(ahead.calls)
        prefetched.prefetch(step, acc, ahead)
        assert len(ahead.calls) - before <= 1  # one pass a step at most
        for micro in (0, 1):
            got = prefetched.batch(step, micro, acc, during)
            want = lazy.batch(step, micro, acc, FakeTrunk())
            for a, b in zip(got, want, strict=True):
                assert torch.equal(a, b)
    assert ahead.calls[0] == 4  # step 1 draws 4 distinct rows
    assert during.calls == []  # every batch found its rows kept
    assert sum(ahead.calls) == len(rows) == len(prefetched._hidden)  # each row through the trunk once


def test_a_packed_row_is_used_only_where_it_costs_less():
    """One row's attention grows with the square of its length: a GPU-sized micro-batch stays padded,
    a CPU-sized one with padding packs, one without padding (or a shared start) stays padded."""
    from types import SimpleNamespace

    from rlhf_stack.ppo.flat import pack

    config = SimpleNamespace(hidden_size=576, intermediate_size=1536)  # SmolLM2-135M's
    keep = torch.ones(64, 100, dtype=torch.bool)
    keep[::2, :30] = False  # every other row left-padded by 30
    used = keep.clone()
    used[:, :40] = False
    assert pack(keep[:4], used[:4], None, config) is not None  # 4 rows: 340 tokens packed against 400 padded
    assert pack(keep, used, None, config) is None  # 64 rows: one row of 5,440 tokens, its attention outweighs
    assert pack(torch.ones(4, 100, dtype=torch.bool), used[1:8:2], None, config) is None  # no padding to remove
