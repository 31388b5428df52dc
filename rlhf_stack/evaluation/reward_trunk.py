"""The evaluation's proxy reward model, scoring samples from the bottom blocks they were drawn with.

`proxy_reward_model(checkpoint)` is a `RewardScorer` with a `ppo.trunk_reward.HeldTrunk`: while
the evaluation samples from a model that shares the RM's bottom blocks (`shared_blocks`; an RM
and policies trained with adapters on their top blocks only, as in the quickstart), `LM.sample`
keeps those blocks' output over the RM's token sequence of each sample, and scoring runs only
the RM's top blocks and score head over them. On the quickstart that is 4 of 30 blocks for each
of the evaluation's 512 responses. Samples it holds nothing for are scored by the full pass.
"""

from __future__ import annotations

from functools import partial

import torch

from rlhf_stack.ppo.trunk import Trunk
from rlhf_stack.ppo.trunk_reward import HeldTrunk


def proxy_reward_model(checkpoint: str):
    """`RewardScorer(checkpoint)`, holding trunk outputs (`.held`) when the RM is a decoder with a score head."""
    from rlhf_stack.reward.scorer import RewardScorer

    scorer = RewardScorer(checkpoint)
    backbone = _backbone(scorer.model)
    if backbone is not None:
        scorer.hold(HeldTrunk(partial(_top_scores, scorer.model, backbone), scorer.tokenizer.pad_token_id,
                              scorer.batch_size))
    return scorer


def shared_blocks(scorer, lm) -> int:
    """Bottom blocks the proxy RM `scorer` shares with the sampling model `lm` (`models.LM`), checked
    as the KL pass checks its reference (`models.shared_depth`); 0 when none or the dtypes differ."""
    from rlhf_stack.evaluation.models import shared_depth

    backbone = _backbone(scorer.model)
    if scorer.held is None or backbone is None or lm.backbone is None:
        return 0
    if next(scorer.model.parameters()).dtype != lm.model.dtype:
        return 0
    return shared_depth(lm.backbone, lm.tokenizer, backbone, scorer.tokenizer, scorer.device)


def sampling_args(proxy, model, kl_depth: int = 0) -> dict:
    """`LM.sample` arguments: record the bottom `kl_depth` blocks for the KL pass (0: none), and let
    `proxy` keep their output for scoring when it shares exactly those blocks (any, without a KL pass)."""
    depth = shared_blocks(proxy, model) if proxy is not None else 0
    if not depth or (kl_depth and depth != kl_depth):
        return {"trunk_depth": kl_depth}
    return {"trunk_depth": depth, "keep_trunk": bool(kl_depth), "reward": proxy}


def scores_then_release(proxy, prompts: list, samples, n: int) -> list[float] | None:
    """The proxy RM's scores of `samples` (`models.Samples`, n a prompt); then it lets go of their
    trunk outputs, so it holds one side's at a time (the quickstart's pool: 256 x ~70 x 576 floats,
    ~41 MB). None without a proxy RM."""
    if proxy is None:
        return None
    scores = proxy([p for p in prompts for _ in range(n)], samples.texts)
    if proxy.held is not None:
        proxy.held.clear()
    return scores


def _backbone(model):
    """The decoder stack of a sequence classifier with a `score` head (e.g. LlamaModel), else None."""
    inner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if hasattr(inner, "layers") and hasattr(inner, "norm") and isinstance(getattr(model, "score", None),
                                                                          torch.nn.Linear):
        return inner
    return None


def _top_scores(model, backbone, hidden, mask, last, depth):
    """The classifier's blocks from `depth` up, final norm and score head, read at `last`."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    out = Trunk(backbone, depth).top(hidden.to(device, dtype), mask.to(device))
    return model.score(out[torch.arange(len(last)), last.to(device)])[:, 0]
