"""Reward sources for PPO and evaluation: a trained RM, a text classifier, Python functions, sums.

- `RewardScorer(checkpoint).score(prompts, responses)`: a reward-model checkpoint (full weights or
  a LoRA adapter with its score head) scoring with its OWN tokenizer and chat template (prompt as
  the user turn, response as the assistant turn), so the policy may use another tokenizer. The
  normalisation bias stored by the reward stage (`stage.json` key `reward_bias`) is added.
- `ClassifierScorer`: any text-classification checkpoint (num_labels >= 2, id2label); the reward is
  the probability of one label (e.g. POSITIVE of a sentiment model, TRL's IMDB example).
- `load_callable("pkg.module:function")`: `f(prompts, responses) -> list[float]`.
- `build_reward_function(sources) -> CombinedReward`: the weighted sum, with each part by name.

Outside this library a reward checkpoint is a plain HF directory: `AutoModelForSequenceClassification`
(full) or that class on `adapter_config.json`'s base + `PeftModel.from_pretrained` (LoRA; the score
head is in the adapter), with `config.pad_token_id = tokenizer.pad_token_id`; the logit of
`tokenizer.apply_chat_template([user prompt, assistant response])` plus stage.json's `reward_bias`
is what `RewardScorer` returns (tests/stages/test_reward_stage.py checks it to 1e-5).

The encoding helpers (`encode_conversation`, `pad_right`, `forward_scores`) are the one place
where text becomes reward-model input: the reward stage trains through them too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from rlhf_stack.config import Config
from rlhf_stack.errors import ConfigError, ModelNotFoundError

Prompt = str | list[dict]
BIAS_KEY = "reward_bias"  # stage.json key of the normalisation bias


# ---- encoding and forward passes (shared with the reward stage) --------------------------------


def to_messages(prompt: Prompt, response: str) -> list[dict]:
    """Prompt (text -> one user turn, or chat messages) followed by the response as assistant turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return messages + [{"role": "assistant", "content": response}]


def encode_conversation(tokenizer, prompt: Prompt, response: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of the chat-formatted (prompt, response); (ids, truncated).

    Too-long sequences lose tokens from the LEFT (the start of the prompt): the reward is read at
    the last token, so the response and its end-of-turn marker must survive truncation.
    """
    ids = tokenizer.apply_chat_template(to_messages(prompt, response), tokenize=True, return_dict=True)["input_ids"]
    ids = list(ids)
    return (ids[-max_length:], True) if len(ids) > max_length else (ids, False)


def pad_right(seqs: Sequence[Sequence[int]], pad_token_id: int,
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, max_len) input_ids padded on the right with `pad_token_id`, and the attention mask."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for n, seq in enumerate(seqs):
        input_ids[n, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[n, :len(seq)] = 1
    return input_ids.to(device), attention_mask.to(device)


def forward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(n,) float32 rewards: the sequence classifier's logit at the last non-pad token.

    transformers' *ForSequenceClassification pools the rightmost token that is not
    `config.pad_token_id`, which is why that id must equal the tokenizer's pad id.
    """
    width = int(attention_mask.sum(dim=1).max())  # drop columns that are padding in every row
    out = model(input_ids=input_ids[:, :width], attention_mask=attention_mask[:, :width], use_cache=False)
    return out.logits[:, 0].float()


def shared_prefix_length(seqs: Sequence[Sequence[int]], pad_token_id: int) -> int:
    """Tokens every sequence of one ranking starts with (system turn, prompt, assistant header).

    Capped so each sequence keeps its last non-pad token (where the reward is read) after the
    prefix. Found on the token ids, so any chat template works; 0 when nothing is shared.
    """
    shortest = min(len(s) for s in seqs)
    length = 0
    while length < shortest and all(s[length] == seqs[0][length] for s in seqs):
        length += 1
    last_scored = min(max((i for i, t in enumerate(s) if t != pad_token_id), default=0) for s in seqs)
    return min(length, last_scored)


def forward_scores_shared(model, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, prefix_lengths: torch.Tensor,
                          owner: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          prefix_model=None) -> torch.Tensor:
    """(n,) rewards of completions that continue shared prompts, each prompt encoded once.

    prefix_ids / prefix_mask: (B, P) right-padded prompt tokens of B rankings; prefix_lengths (B,);
    owner (n,): the ranking of each completion; input_ids / attention_mask (n, C): the completion
    tokens after their prompt, right-padded. The prompts' key/value cache is computed once and
    indexed per completion, so a ranking costs P + K*C tokens instead of K*(P + C); the scores
    equal `forward_scores` on the full sequences up to float rounding (same positions, same
    attention). prefix_model: the module for the prompt pass (the unwrapped model under DDP, so
    the wrapper sees one forward per backward).
    """
    needed, index = owner.unique(return_inverse=True)  # only the prompts of these completions
    p_mask = prefix_mask[needed]
    width = int(p_mask.sum(dim=1).max())
    p_mask = p_mask[:, :width]
    cache = (prefix_model or model)(input_ids=prefix_ids[needed, :width], attention_mask=p_mask,
                                    use_cache=True).past_key_values
    cache.batch_select_indices(index)
    c_width = int(attention_mask.sum(dim=1).max())
    positions = prefix_lengths[owner][:, None] + torch.arange(c_width, device=input_ids.device)[None, :]
    out = model(input_ids=input_ids[:, :c_width], attention_mask=torch.cat([p_mask[index], attention_mask[:, :c_width]], 1),
                position_ids=positions, past_key_values=cache, use_cache=True)
    return out.logits[:, 0].float()


@torch.no_grad()
def score_sequences(model, seqs: Sequence[Sequence[int]], pad_token_id: int, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    """(n,) float32 CPU rewards of token sequences, batched by similar length, in input order."""
    order = sorted(range(len(seqs)), key=lambda n: len(seqs[n]))
    out = torch.empty(len(seqs), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, attention_mask = pad_right([seqs[n] for n in idx], pad_token_id, device)
        out[idx] = forward_scores(model, input_ids, attention_mask).cpu()
    return out


# ---- a trained reward model ---------------------------------------------------------------------


class RewardScorer:
    """Scores (prompt, response) pairs with a reward-model checkpoint, batched, bias added."""

    def __init__(self, checkpoint: str | Path, device=None, batch_size: int = 16, max_length: int = 1024,
                 apply_bias: bool = True, dtype: str = "auto", model: torch.nn.Module | None = None):
        """model: the checkpoint already in memory as a one-label sequence classifier (PPO hosts a
        LoRA RM on its shared base, `ppo.shared_reward`); None loads it from `checkpoint`."""
        from rlhf_stack import modeling
        from rlhf_stack.config import ModelConfig

        self.checkpoint = str(checkpoint)
        self.device = torch.device(device) if device is not None else modeling.resolve_device()
        self.batch_size = batch_size
        self.max_length = max_length
        self.apply_bias = apply_bias
        self.tokenizer = modeling.load_tokenizer(self.checkpoint)
        if model is None:
            cfg = ModelConfig(name_or_path=self.checkpoint, tuning="full", dtype=dtype)
            model = modeling.load_sequence_classifier(cfg, merge=True, device=self.device)
        self.model = model.eval()
        if self.model.config.num_labels != 1:
            raise ModelNotFoundError(f"{checkpoint} has {self.model.config.num_labels} output labels, not one "
                                     "reward; use a `classifier` reward source for a text classifier")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.bias = read_reward_bias(self.checkpoint)  # from the reward stage; 0.0 when none was computed

    def score_tensor(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """(b,) float32 CPU rewards, `bias` added when `apply_bias`."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return torch.zeros(0)
        seqs = [encode_conversation(self.tokenizer, p, r, self.max_length)[0] for p, r in zip(prompts, responses, strict=True)]
        scores = score_sequences(self.model, seqs, self.tokenizer.pad_token_id, self.batch_size, self.device)
        return scores + self.bias if self.apply_bias else scores

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.score_tensor(prompts, responses).tolist()

    __call__ = score


def read_reward_bias(checkpoint: str | Path) -> float:
    """The normalisation bias a reward checkpoint stores in stage.json (0.0 if none)."""
    from rlhf_stack.modeling import read_stage_info

    info = read_stage_info(checkpoint) or {}
    return float(info.get(BIAS_KEY) or 0.0)


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


# ---- Python callables ---------------------------------------------------------------------------


def load_callable(spec: str) -> Callable:
    """`package.module:function` -> the function; ConfigError with the reason when it cannot be loaded."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward function {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"reward function {spec!r}: cannot import {module_name} ({exc})") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"reward function {spec!r}: {module_name} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"reward function {spec!r} is not callable")
    return fn


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
            values = torch.as_tensor(fn(list(prompts), list(responses)), dtype=torch.float32).reshape(-1).cpu()
            if values.numel() != len(responses):
                raise ValueError(f"reward {name!r} returned {values.numel()} values for {len(responses)} responses")
            parts[name] = values
            total += weight * values
        return total, parts


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
