"""PPOConfig: every setting of stage 3 (PPO / PPO-ptx), each documented where it is declared.

Defaults follow InstructGPT (Ouyang et al. 2022) and "The N+ Implementation Details of RLHF with
PPO" (Huang et al. 2024) where those agree, scaled down so the quickstart runs on a 2-core CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlhf_stack.config import Config, DataConfig, ModelConfig, OnNonFinite
from rlhf_stack.ppo.estimators import trains_on_winners, uses_value_model
from rlhf_stack.ppo.rewards import RewardSourceConfig


class PPOConfig(Config):
    """Stage 3: PPO (and PPO-ptx) of the SFT policy against reward sources (InstructGPT step 3)."""

    # ---- models and data ---------------------------------------------------------------------
    policy: ModelConfig
    """The policy init and reference: the SFT checkpoint (the runner puts `@sft` here). `tuning:
    lora` (or `peft` with a method that can be switched off and stacked: dora, rslora, ia3, loha,
    lokr, oft, boft) shares one base between policy, reference and value; `full` / `freeze` keep
    separate copies. PiSSA/OLoRA, prompt/prefix tuning and bottleneck adapters are refused here."""
    prompts: DataConfig
    """Prompts to roll out on (`prompts` format). Held-out prompts (eval_path / eval_fraction) are
    scored once at the end (`eval_score`)."""
    rewards: list[RewardSourceConfig] = []
    """Reward sources combined by weight: the trained RM (`@reward`), classifiers, Python functions
    (`module:function`). May be empty when `train_ppo` is given `reward_fns`."""
    value_init: str | None = None
    """Checkpoint to initialise the value function from (`@reward`: the RM, as InstructGPT). It is
    used when its tokenizer matches the policy's; otherwise, or when None, the value starts from the
    policy base with a zero head. Under LoRA, an RM that is a LoRA adapter over the policy's base
    becomes the value adapter on the shared base; any other RM a value model of its own (a copy of
    the RM with LoRA layers; its forward and backward run before the policy's, so an update holds
    one model's activations at a time). Only with advantage_estimator `gae` (the others have no value)."""
    host_reward_model: bool = True
    """With `tuning: lora`, a reward model that is a LoRA adapter over the policy's own base joins
    policy, reference and value as one more adapter on the one base copy in memory (the same
    scores, half the weights); and the reward model a LoRA value model was copied from
    (`value_init`) scores on that copy with the value's adapters disabled. False: it always loads
    as a separate model."""
    ptx_data: DataConfig | None = None
    """Pretraining corpus (`corpus` format) for PPO-ptx; needed when ptx_coef > 0."""
    ptx_coef: float = Field(0.0, ge=0.0)
    """Weight of the LM loss on ptx_data added to every update (InstructGPT eq. 2 gamma); 0 = plain PPO."""
    ptx_max_length: int = Field(256, ge=8)
    """Tokens per corpus text in the ptx batch (longer texts are truncated)."""

    # ---- sampling ----------------------------------------------------------------------------
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature; logprobs are computed from logits divided by it (Huang et al. 2024)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1.0 = off). Anything but 1.0 makes samples off-policy for PPO."""
    top_k: int = Field(0, ge=0)
    """Sample among the k most likely tokens (0 = off)."""
    max_new_tokens: int = Field(48, ge=1)
    """Longest response; generation stops earlier at the tokenizer's EOS."""
    max_prompt_length: int = Field(256, ge=1)
    """Longest prompt in tokens after the chat template; longer prompts are a data error naming the line."""

    # ---- batch sizes and schedule --------------------------------------------------------------
    steps: int = Field(100, ge=1)
    """Total PPO steps (one step = one batch of rollouts + ppo_epochs of updates on it)."""
    batch_size: int = Field(16, ge=2)
    """Rollouts per step per process: batch_size / samples_per_prompt prompts, each sampled
    samples_per_prompt times (with the default 1: one rollout per prompt)."""
    samples_per_prompt: int = Field(1, ge=1)
    """Responses sampled per prompt in a step (k), for every estimator; batch_size must be a
    multiple of it. The k samples of a prompt are adjacent in the batch and form its group for
    the critic-free estimators, which need k >= 2 (Ahmadian et al. 2024 ran RLOO with k = 2 and
    4; DeepSeekMath sampled 64 per question for GRPO)."""
    mini_batch_size: int = Field(8, ge=1)
    """Rollouts per optimizer update; batch_size must be a multiple of it (with `best_of_k`: winners
    per update, and batch_size / samples_per_prompt must be a multiple of it)."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches per mini-batch (micro-batch = mini_batch_size / grad_accum_steps rollouts);
    the micro-batch is also the batch size of the rollout's forward passes."""
    ppo_epochs: int = Field(2, ge=1)
    """Passes over each rollout batch (each pass in a fresh random mini-batch order)."""

    # ---- optimisation --------------------------------------------------------------------------
    learning_rate: float | None = Field(None, gt=0.0)
    """Peak learning rate of the policy. None: 1e-5 with full fine-tuning (InstructGPT's order), 5e-4
    with an adapter method (the quickstart's LoRA value; 1e-5 barely moves an adapter in 25 steps, see
    benchmarks/RESULTS.md, "A reward the code has never seen")."""
    value_learning_rate: float | None = Field(None, gt=0.0)
    """Learning rate of the value function (None: same as learning_rate; `gae` only)."""
    lr_scheduler: str = "constant"
    """transformers scheduler name over all updates: constant, linear, cosine, ..."""
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the updates spent warming the learning rate up from 0."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the gradient norm of policy + value parameters (None: no clipping)."""
    vf_coef: float = Field(0.1, ge=0.0)
    """Weight of the value loss in the total loss (TRL and Huang et al. 2024 use 0.1; `gae` only)."""
    value_warmup_steps: int = Field(0, ge=0)
    """For the first N steps train only the value function (`gae`): the policy is frozen and no
    policy or ptx loss is applied, so a value initialised from the RM first learns to predict
    returns before its advantages steer the policy (InstructGPT initialises the value from the
    RM; OpenRLHF calls this `critic_warmup`). The LR schedule counts these updates too."""
    policy_ema: float | None = Field(None, ge=0.0, lt=1.0)
    """Save an exponential moving average of the policy's trainable weights as the stage's policy,
    updated once per step (average <- policy_ema * average + (1 - policy_ema) * weights) from the
    initial policy; the run itself trains and samples the raw weights. None: save the last weights.
    0.9 averages over roughly the last 10 steps. Each step also moves the responses it trained on
    far more than unseen ones (benchmarks/RESULTS.md, sixth session); the average keeps what the
    steps agree on. Saved in checkpoints, so a resumed run ends with the same average."""
    loss_aggregation: Literal["token_mean", "sequence_mean", "dr_grpo"] = "token_mean"
    """How the policy loss of a micro-batch reduces its per-token terms to one number:
    `token_mean` = mean over all real tokens (PPO; long responses weigh more); `sequence_mean` =
    mean over responses of each response's token mean (GRPO, Shao et al. 2024); `dr_grpo` = sum
    over tokens / (responses * max_new_tokens), unbiased in length (Dr. GRPO, Liu et al. 2025)."""

    # ---- PPO ------------------------------------------------------------------------------------
    advantage_estimator: Literal["gae", "rloo", "grpo", "reinforce_baseline", "best_of_k"] = "gae"
    """How step 4 turns rewards into advantages. `gae`: GAE with a value function (InstructGPT);
    the critic-free ones build no value model and compare the samples_per_prompt (>= 2) responses
    to one prompt, each response's reward being its score - kl_coef * its summed KL: `rloo` =
    reward - mean of its k - 1 siblings' rewards (Ahmadian et al. 2024); `grpo` = (reward - group
    mean) / (group std + 1e-4) (Shao et al. 2024); `reinforce_baseline` = reward - group mean,
    then whitened over the batch (Hu 2025, REINFORCE++); `best_of_k` = 1 for the best response of
    each prompt's group, 0 for the others, and the PPO epochs train on those winners only (online
    rejection sampling, RAFT: Dong et al. 2023), so mini_batch_size counts winners and must divide
    batch_size / samples_per_prompt. Math in ppo/estimators.py."""
    clip_range: float = Field(0.2, gt=0.0)
    """Policy ratio clip epsilon (Schulman 2017)."""
    clip_range_value: float = Field(0.2, gt=0.0)
    """How far one update may move a value estimate from its rollout-time value (`gae` only)."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount factor; 1.0 as in all RLHF work (the episode is one response)."""
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    """GAE lambda (Schulman 2016; `gae` only)."""
    whiten_advantages: bool = True
    """Normalise GAE advantages per rollout batch to zero mean, unit variance (`gae` only: each
    critic-free estimator carries its own normalisation, see advantage_estimator)."""

    # ---- reward shaping -------------------------------------------------------------------------
    kl_coef: float = Field(0.05, ge=0.0)
    """KL penalty coefficient beta (the initial value when adaptive_kl is on)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator in the reward: k1 = log pi - log pi_ref (InstructGPT), k3 >= 0 (Schulman 2020)."""
    adaptive_kl: bool = False
    """Steer kl_coef toward kl_target (Ziegler et al. 2019) instead of keeping it fixed."""
    kl_target: float = Field(6.0, gt=0.0)
    """Target KL per response (nats) of the adaptive controller."""
    kl_horizon: int = Field(10000, ge=1)
    """Horizon of the adaptive controller, in rollouts (Ziegler et al. 2019 use 10000)."""
    score_norm: Literal["none", "running", "rm_bias"] = "none"
    """Score normalisation before use: `running` = (score - running mean) / running std over all
    rollouts so far; `rm_bias` = subtract the bias the reward sources stored at training time."""
    score_clip: float | None = Field(None, gt=0.0)
    """Clamp (normalised) scores into [-score_clip, score_clip] (None: no clipping)."""
    missing_eos_penalty: float = Field(0.0, ge=0.0)
    """Subtracted from the score of a response that hit max_new_tokens without EOS."""

    # ---- run, logs, checkpoints -----------------------------------------------------------------
    output_dir: str = "outputs/ppo"
    """The final checkpoint (policy adapter or full model + tokenizer + stage.json); resume states
    under output_dir/checkpoints/, logs under output_dir/logs/."""
    seed: int = 42
    """Seed for data order, value head and sampling (process i samples with seed + i)."""
    save_every_steps: int | None = Field(25, ge=1)
    """Write a resumable checkpoint every N steps (None: only the final checkpoint)."""
    resume: bool = True
    """Continue from the newest checkpoint in output_dir/checkpoints when there is one."""
    on_nonfinite: OnNonFinite = "stop"
    """A NaN or inf in a step's scores (any reward source), KL-penalised rewards, advantages or
    returns, or in an update's loss or gradients, found before the optimizer step. `stop`: the run
    ends with an error naming the step, the quantity (for a score: the reward source, the prompt and
    the response) and the last good checkpoint; nothing is saved after the bad step. `skip_step`:
    a bad score / reward / advantage drops the whole step (no update, and neither the KL controller
    nor the score statistics see it); a bad loss or gradient drops that mini-batch's update (no
    optimizer or LR-scheduler step). Skipped updates are counted: `skipped_updates` per step in
    ppo_log.jsonl, in total in stage.json and the run report."""
    keep_checkpoints: bool = False
    """Keep output_dir/checkpoints after a successful run."""
    sample_every_steps: int = Field(10, ge=1)
    """Append a table of sample (prompt, response, score) rows to logs/samples.jsonl every N steps."""
    samples_per_log: int = Field(4, ge=1)
    """Rows in each sample table."""
    log_file: str | None = None
    """Per-step JSONL log (None: output_dir/logs/ppo_log.jsonl)."""
    report_to: list[str] = ["none"]
    """Trackers through accelerate: none, tensorboard, wandb, trackio."""
    progress_bar: bool = True
    """Show a tqdm progress bar on the main process."""
    eval_max_prompts: int = Field(64, ge=0)
    """Held-out prompts scored at the end for `eval_score` (0: skip)."""
    pack_weights_for_sampling: bool = True
    """CPU, float32: sample through copies of the linear weights reordered for oneDNN
    (`ppo/packed.py`). The frozen layers' copies (the shared base, the reference and reward
    adapters) are made once and kept for the whole run, one more set of those weights (SmolLM2-135M:
    ~540 MB), and serve every pass without gradient (sampling, the rollout's reference / value /
    reward passes, the PPO-ptx corpus rows' trunk pass) and the frozen products of the PPO updates
    (the LM head's input gradient through one more packed copy, of its transpose: SmolLM2-135M's
    ~113 MB); the trainable layers' are made at each `generate()` call and freed when it ends. With `merge_lora_for_generation` (which writes into the
    base) every call packs all layers. Outputs equal the plain products up to float rounding. On the
    2-core AMD EPYC here, decoding SmolLM2-135M at batch 8 ran 1.5x faster, keeping the frozen
    copies saved ~0.3 s of reordering a step, and the packed update products cut the quickstart's
    PPO epochs by ~30% (benchmarks/RESULTS.md). No effect on GPU, in other
    dtypes, or where this torch build lacks the ops."""
    unpadded_prompt_passes: bool = True
    """Run the prompt pass before sampling, and the reward model when it is hosted on the shared
    base (`host_reward_model`), without padding: each distinct prompt (or scored sequence) once,
    the start every one of them shares (a chat template's system turn) once, the rest in a few
    passes grouped by length (`ppo/prefill.py`). Outputs equal the padded passes' up to float
    rounding. On the quickstart the prompt pass took 0.42-0.50 s instead of 0.87-0.93 s, a whole
    sampling call 1.09-1.14x less time, the RM's scoring 0.89 s instead of 1.07 s
    (benchmarks/RESULTS.md). Models whose cache is not a plain full-attention one (sliding
    windows, recurrent layers) and FSDP2 runs take the padded passes whatever this says."""
    merge_lora_for_generation: bool = False
    """Fold LoRA into the base weights while generating (then unfold). Measured on SmolLM2-135M
    (LoRA r16 on all linear layers, 16 x 48 tokens, 2 CPU cores): generation 9% faster, but every
    round trip leaves rounding drift (~1e-7) in the shared base, which is also the reference and
    breaks exact resume; so it is off by default (benchmarks/ppo_generation_merge.py); float32 only.
    Ignored under FSDP2 (outside a forward each process holds only a shard of the base weights)."""
    cache_frozen_trunk: bool = True
    """With adapters on the top blocks only (`policy.lora.last_n_layers`, `policy.peft.last_n_layers`),
    run the blocks below every adapter once per rollout and reuse their output in every later pass over it (reference, value,
    each PPO epoch): same results up to float rounding, checked at setup (`ppo/trunk.py`).
    No effect with full tuning or adapters on every block."""
    trunk_from_sampling: bool = True
    """With the frozen trunk (`cache_frozen_trunk`), keep its output from sampling, which runs the
    same blocks over the same tokens (the prompt pass and each decoding step), instead of running
    it again over the finished batch: one trunk pass less per step, the same values up to float
    rounding (a cached decoding step against one pass). Off: the trunk runs after sampling."""
    reward_from_trunk: bool = True
    """With the frozen trunk kept from sampling (`trunk_from_sampling`) and the RM hosted on the
    shared base (`host_reward_model`), the RM reads the trunk's output too: the sampled tokens its
    chat template shares, plus the few it adds (end of turn), run on the sampling's key/value cache;
    only the blocks above the trunk run to score (`ppo/trunk_reward.py`). The same scores up to
    float rounding; off: the RM runs every block over each scored sequence."""
    packed_passes: bool = True
    """Run the passes over a rollout micro-batch (reference and value in the rollout, policy and
    value in each PPO epoch; the blocks above the frozen trunk, or every block without one) over
    the micro-batch packed into one row: no padding columns, the start every prompt shares (a chat
    template's system turn) once, and the LM head, the value head and the log-softmax only where
    their outputs are used; the same for the PPO-ptx corpus rows (`ppo/flat.py`). The same results
    up to float rounding. On the quickstart a step's PPO epochs took 3.22 s instead of 4.49 s
    (benchmarks/RESULTS.md). Off, or with attention that takes no custom mask (flash-attention
    kernels): the padded `[prompt | response]` layout."""

    @field_validator("policy")
    @classmethod
    def _method_fits(cls, policy: ModelConfig) -> ModelConfig:
        from rlhf_stack.peft_methods import check_stage

        check_stage(policy, "ppo")
        return policy

    @model_validator(mode="after")
    def _default_learning_rate(self) -> PPOConfig:
        if self.learning_rate is None:  # set once: the assignment re-validates, and then it is set
            self.learning_rate = 1e-5 if self.policy.adapter_method is None else 5e-4
        return self

    @model_validator(mode="after")
    def _check_batches(self) -> PPOConfig:
        self._check_estimator()  # first: update_batch_size needs whole groups of samples_per_prompt
        if self.update_batch_size % self.mini_batch_size:
            trained = ("batch_size / samples_per_prompt, the winners best_of_k trains on,"
                       if trains_on_winners(self.advantage_estimator) else "batch_size")
            raise ValueError(f"{trained} ({self.update_batch_size}) must be a multiple of mini_batch_size "
                             f"({self.mini_batch_size})")
        if self.mini_batch_size % self.grad_accum_steps:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) must be a multiple of "
                             f"grad_accum_steps ({self.grad_accum_steps})")
        if self.ptx_coef > 0 and self.ptx_data is None:
            raise ValueError("ptx_coef > 0 needs ptx_data (a corpus file)")
        return self

    def _check_estimator(self) -> None:
        k, name = self.samples_per_prompt, self.advantage_estimator
        if self.batch_size % k:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of samples_per_prompt ({k}): "
                             "each step samples batch_size / samples_per_prompt prompts k times")
        if not self.uses_value_model and k < 2:
            raise ValueError(f"advantage_estimator {name} compares the responses to one prompt: it needs "
                             f"samples_per_prompt >= 2 (got {k})")
        value_settings = [key for key in ("value_init", "value_learning_rate") if getattr(self, key) is not None]
        value_settings += ["value_warmup_steps"] if self.value_warmup_steps else []
        if not self.uses_value_model and value_settings:
            raise ValueError(f"{', '.join(value_settings)}: advantage_estimator {name} builds no value model "
                             "(only gae does); remove these settings")
        if self.value_warmup_steps >= self.steps:
            raise ValueError(f"value_warmup_steps ({self.value_warmup_steps}) must be less than steps "
                             f"({self.steps}), or the policy is never trained")

    @property
    def micro_batch_size(self) -> int:
        """Rollouts per forward/backward pass."""
        return self.mini_batch_size // self.grad_accum_steps

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts per step per process (each sampled samples_per_prompt times)."""
        return self.batch_size // self.samples_per_prompt

    @property
    def update_batch_size(self) -> int:
        """Rollouts the PPO epochs train on per step per process: batch_size, or with best_of_k
        each prompt's winner (prompts_per_step)."""
        return self.prompts_per_step if trains_on_winners(self.advantage_estimator) else self.batch_size

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per step: ppo_epochs passes of update_batch_size / mini_batch_size."""
        return self.ppo_epochs * (self.update_batch_size // self.mini_batch_size)

    @property
    def uses_value_model(self) -> bool:
        """Whether a value function is built and trained (advantage_estimator `gae`)."""
        return uses_value_model(self.advantage_estimator)
