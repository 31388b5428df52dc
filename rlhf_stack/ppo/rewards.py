"""Stage 3's reward: the sources PPO scores responses with, their weighted sum, and the
processing from raw score to the terminal reward.

- a trained RM (`reward.scorer.RewardScorer`, with its own tokenizer and chat template, so the
  policy may use another vocabulary; a LoRA RM over the policy's base is hosted on the shared base,
  `shared_reward.py`);
- `ClassifierScorer`: any text-classification checkpoint (num_labels >= 2, id2label); the reward is
  the probability of one label (e.g. POSITIVE of a sentiment model, TRL's IMDB example);
- Python functions `f(prompts, responses) -> list[float]` named `package.module:function`, or
  passed to `train_ppo(cfg, reward_fns=[...])`; every source's output is checked (`checked_scores`):
  an exception, or anything but one number per response, is a `RewardFunctionError` naming it;
- `build_reward_function(sources) -> CombinedReward`: the weighted sum, with each part by name;
- `process_scores`: normalise, clip, penalise a missing EOS (step 2 of the loop).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from rlhf_stack.config import Config, load_callable
from rlhf_stack.errors import ConfigError, RewardFunctionError
from rlhf_stack.nonfinite import quote
from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.control import RunningMoments
from rlhf_stack.reward.batching import Prompt

# ---- a text classifier ----------------------------------------------------------------------------


class ClassifierScorer:
    """Reward = P(label | response) under a text-classification checkpoint (e.g. a sentiment model)."""

    def __init__(self, checkpoint: str | Path, label: str, device=None, batch_size: int = 16,
                 max_length: int = 512, with_prompt: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rlhf_stack import modeling

        path = modeling.resolve_model_path(str(checkpoint))
        self.device = torch.device(device) if device is not None else modeling.resolve_device()
        self.batch_size, self.max_length, self.with_prompt = batch_size, max_length, with_prompt
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        labels = {str(v): int(k) for k, v in self.model.config.id2label.items()}
        if self.model.config.num_labels < 2 or label not in labels:
            raise ConfigError(f"classifier {checkpoint} has labels {sorted(labels)}; reward label {label!r} is "
                              "not one of them (set `label` to one of these)")
        self.label_id = labels[label]

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        texts = [_classifier_text(p, r, self.with_prompt) for p, r in zip(prompts, responses, strict=True)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            probs = self.model(**batch).logits.float().softmax(dim=-1)
            out.extend(probs[:, self.label_id].tolist())
        return out


def _classifier_text(prompt: Prompt, response: str, with_prompt: bool) -> str:
    if not with_prompt:
        return response
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return f"{text}\n{response}"


# ---- sources and their weighted sum -----------------------------------------------------------------


class RewardSourceConfig(Config):
    """One term of the reward: a trained RM, a classifier label probability, or a Python function."""

    kind: Literal["reward_model", "classifier", "python"] = "reward_model"
    """`reward_model`: a reward-stage checkpoint; `classifier`: P(label) of a text classifier;
    `python`: `f(prompts, responses) -> list[float]` named `package.module:function`."""
    path: str
    """Checkpoint directory / hub id (`@reward` in a recipe), or `package.module:function`."""
    weight: float = 1.0
    """Multiplier of this term in the summed reward."""
    label: str | None = None
    """Classifier only: the label whose probability is the reward (e.g. POSITIVE)."""
    name: str | None = None
    """Name of the term in logs (default: derived from kind and path)."""
    batch_size: int = 16
    """Sequences per forward pass when scoring."""
    max_length: int = 1024
    """Tokens per scored sequence (longer ones lose their start)."""
    apply_bias: bool = True
    """reward_model only: add the checkpoint's normalisation bias (mean 0 on the reference set)."""
    classifier_with_prompt: bool = False
    """Classifier only: classify prompt + response instead of the response alone."""


def source_name(src: RewardSourceConfig) -> str:
    if src.name:
        return src.name
    if src.kind == "python":
        return src.path.rpartition(":")[2]
    base = Path(src.path).name or src.path
    return f"{src.kind}:{base}" + (f":{src.label}" if src.label else "")


class CombinedReward:
    """sum_k weight_k * source_k(prompts, responses); call -> ((b,) float32 CPU, {name: (b,)})."""

    def __init__(self, terms: list[tuple[str, float, Callable]], biases: dict[str, float] | None = None):
        self.terms = terms
        self.biases = biases or {}
        """Normalisation bias already added inside each reward-model term, by name."""

    @property
    def bias(self) -> float:
        """The part of the summed reward that is normalisation bias (weighted)."""
        return sum(weight * self.biases.get(name, 0.0) for name, weight, _ in self.terms)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.terms]

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> tuple[torch.Tensor, dict]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        total = torch.zeros(len(responses), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        for name, weight, fn in self.terms:
            parts[name] = checked_scores(name, fn, list(prompts), list(responses))
            total += weight * parts[name]
        return total, parts


def checked_scores(name: str, fn: Callable, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
    """fn(prompts, responses) as (b,) float32 on CPU.

    RewardFunctionError naming the source and the response when fn raises or returns anything but
    one real number per response. To name the response behind an exception, fn is called again on
    each response alone until one raises (only then, so a flaky failure may name none). NaN and
    inf pass: what they do is `on_nonfinite`'s business (ppo/guard.py).
    """
    try:
        out = fn(prompts, responses)
    except Exception as exc:
        index = _failing_index(fn, prompts, responses)
        where = (f" on response {index} of the batch: {quote(responses[index])}" if index is not None else
                 f" on a batch of {len(responses)} responses (no response alone makes it raise)")
        raise RewardFunctionError(f"reward {name!r} raised {type(exc).__name__}: {' '.join(str(exc).split())}"
                                  f"{_origin(exc)}{where}", name, index) from exc
    n = len(responses)
    if hasattr(out, "shape") and hasattr(out, "dtype"):  # a tensor or an array
        try:
            values = torch.as_tensor(out).to(torch.float32).reshape(-1).cpu()
        except (TypeError, ValueError, RuntimeError):
            values = None
        if values is None or values.numel() != n:
            raise RewardFunctionError(f"reward {name!r} returned an array of shape {tuple(out.shape)} and dtype "
                                      f"{out.dtype} for {n} responses; expected {n} numbers", name)
        return values
    if not isinstance(out, list | tuple):
        raise RewardFunctionError(f"reward {name!r} returned a {type(out).__name__}; expected a list of {n} "
                                  "numbers, one per response", name)
    if len(out) != n:
        raise RewardFunctionError(f"reward {name!r} returned {len(out)} values for {n} responses", name)
    for i, value in enumerate(out):
        if not isinstance(value, numbers.Real) and not (isinstance(value, torch.Tensor) and value.numel() == 1):
            raise RewardFunctionError(f"reward {name!r} returned {value!r} (a {type(value).__name__}, not a number) "
                                      f"for response {i} of the batch: {quote(responses[i])}", name, i)
    return torch.tensor([float(v) for v in out], dtype=torch.float32)


def _failing_index(fn: Callable, prompts: list[Prompt], responses: list[str]) -> int | None:
    """The first response that makes fn raise when scored alone, or None."""
    for i in range(len(responses)):
        try:
            fn([prompts[i]], [responses[i]])
        except Exception:
            return i
    return None


def _origin(exc: BaseException) -> str:
    """` at file:line` of the innermost frame the exception passed through."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def check_reward_sources(sources: list[RewardSourceConfig]) -> None:
    """ConfigError for a source that cannot work, found without loading any model: a classifier
    without `label`, a Python function that does not import."""
    for src in sources:
        if src.kind == "classifier" and not src.label:
            raise ConfigError(f"reward source {source_name(src)}: kind classifier needs `label` (e.g. POSITIVE)")
        if src.kind == "python":
            load_callable(src.path)


def build_reward_function(sources: list[RewardSourceConfig], extra_fns: list[Callable] | None = None,
                          device=None, host: Callable[[str], torch.nn.Module | None] | None = None) -> CombinedReward:
    """Load every source once and return their weighted sum (extra functions weigh 1).

    host: given a reward_model source's path, a model already holding it in memory, or None
    to load it (PPO passes one that puts a LoRA RM on the policy's shared base).
    """
    check_reward_sources(sources)
    terms: list[tuple[str, float, Callable]] = []
    biases: dict[str, float] = {}
    for src in sources:
        name = source_name(src)
        if src.kind == "reward_model":
            from rlhf_stack.reward.scorer import RewardScorer

            scorer = RewardScorer(src.path, device=device, batch_size=src.batch_size, max_length=src.max_length,
                                  apply_bias=src.apply_bias, model=host(src.path) if host else None)
            biases[name] = scorer.bias if src.apply_bias else 0.0
            fn: Callable = scorer.score
        elif src.kind == "classifier":
            fn = ClassifierScorer(src.path, src.label, device=device, batch_size=src.batch_size,
                                  max_length=src.max_length, with_prompt=src.classifier_with_prompt).score
        else:
            fn = load_callable(src.path)
        terms.append((name, src.weight, fn))
    for fn in extra_fns or []:
        terms.append((getattr(fn, "__name__", f"fn{len(terms)}"), 1.0, fn))
    names = [name for name, _, _ in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward sources need distinct names (got {names}); set `name` on each")
    if not terms:
        raise ConfigError("no reward source given")
    return CombinedReward(terms, biases)


# ---- PPO's use of the sources -------------------------------------------------------------------


def check_reward_config(cfg, reward_fns: list[Callable] | None) -> None:
    """The reward settings' errors, found before any model is loaded."""
    if not cfg.rewards and not reward_fns:
        raise ConfigError("ppo: no reward: set `rewards` in the config or pass reward_fns to train_ppo")
    if cfg.score_norm == "rm_bias" and not any(s.kind == "reward_model" and s.apply_bias for s in cfg.rewards):
        raise ConfigError("score_norm: rm_bias needs a reward source of kind reward_model with apply_bias: true")
    check_reward_sources(list(cfg.rewards))


def build_reward(cfg, reward_fns: list[Callable] | None, device, model, info):
    """(CombinedReward, info, held): `cfg.rewards` plus the Python callables `reward_fns` (weight 1
    each), where a LoRA RM over the policy's own base is hosted on the shared base as one more
    adapter, and the RM a LoRA value model was copied from scores on that copy (`shared_reward`);
    `info` (assembly.ModelInfo) says where the RM went; `held`: the hosted RM's `HeldTrunk`, which
    the trainer fills after sampling (`trunk_reward.py`), or None. Call `check_reward_config` first
    (train_ppo does, before it loads any model)."""
    from dataclasses import replace

    from rlhf_stack.ppo.shared_reward import (
        REWARD,
        ValueOriginClassifier,
        host_reward_model,
        reward_on_value_model,
    )

    on_value_model = False
    held = []

    def host(path: str):
        nonlocal on_value_model
        found = (host_reward_model(model, path, info.base_model, unpadded=cfg.unpadded_prompt_passes)
                 or reward_on_value_model(model, path, device))
        on_value_model |= isinstance(found, ValueOriginClassifier)
        if getattr(found, "held", None) is not None:  # an RM hosted as an adapter
            held.append(found.held)
        return found

    use_host = cfg.host_reward_model and model.shared
    reward = build_reward_function(list(cfg.rewards), extra_fns=list(reward_fns or []), device=device,
                                   host=host if use_host else None)
    if any(src.kind == "reward_model" for src in cfg.rewards):
        hosted = model.shared and REWARD in model.policy.peft_config
        where = ("adapter-on-shared-base" if hosted else "value-model-adapters-disabled" if on_value_model
                 else "separate-model")
        info = replace(info, reward_model=where)
    return reward, info, (held[0] if len(held) == 1 else None)


def process_scores(raw: torch.Tensor, has_eos: torch.Tensor, all_raw: torch.Tensor, cfg,
                   moments: RunningMoments) -> torch.Tensor:
    """Raw combined scores `(b,)` -> the terminal reward used by PPO `(b,)`.

    all_raw: the raw scores of every process (equal to `raw` on one process), so the running
    statistics agree across ranks. Order: normalise, clip, then the missing-EOS penalty, so
    the penalty is in the same units whatever the normalisation.
    `rm_bias` needs nothing here: the RM sources already added their stored bias.
    """
    scores = raw
    if cfg.score_norm == "running":
        # Normalise by the statistics of everything seen so far, this batch included
        # (Huang et al. 2024 discuss reward normalisation; OpenRLHF normalises the same way).
        moments.update(all_raw)
        std = moments.std if moments.std > 0 else 1.0
        scores = (scores - moments.mean) / std
    if cfg.score_clip is not None:
        scores = PF.clip_scores(scores, cfg.score_clip)
    if cfg.missing_eos_penalty:
        scores = PF.apply_missing_eos_penalty(scores, has_eos, cfg.missing_eos_penalty)
    return scores
