"""Per-device policy settings (policy/plan.py), gradient checkpointing, and vLLM rollouts (policy/vllm.py).

vLLM itself cannot run here (a CUDA build, no GPU): its engine is replaced by `CopyEngine`, a second copy of the
policy that changes only when weights are pushed to it, the property the tests check. Tests marked `gpu` run
the real thing and are skipped without a CUDA GPU (and vLLM)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from mpo_agents.config import (
    GenerationConfig,
    LoraConfig,
    PolicyConfig,
    RolloutConfig,
    TrainerConfig,
    VLLMConfig,
)
from mpo_agents.errors import ConfigError
from mpo_agents.policy.grpo import BehaviourLogprobs, build_policy
from mpo_agents.policy.plan import full_finetune_bytes, plan_training
from mpo_agents.policy.tokens import left_pad
from mpo_agents.policy.vllm import VLLMRollouts, check_vllm, sampled_logprobs
from mpo_agents.policy.weight_checkpoints import checkpoint_holds_lora

GIB = 2**30
CONVERSATIONS = [
    [{"role": "user", "content": "Write about a cat."}],
    [{"role": "user", "content": "Write a short poem about the river city, please."}],
]
GEN = GenerationConfig(max_new_tokens=12, temperature=0.9)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def trainer_config(**changes: Any) -> TrainerConfig:
    values = {"learning_rate": 1e-2, "beta": 0.04, "num_generations": 4, "prompts_per_iteration": 2}
    return TrainerConfig(**{**values, **changes, "max_prompt_length": 64})


def rewards_for(rollouts: list[Any]) -> list[float | None]:
    return [float(len(r.completion_ids) % 5) + 0.5 * r.generation_index for r in rollouts]


# --- the plan ---------------------------------------------------------------------------------------------------
def test_full_finetune_estimate_counts_weights_grads_moments_and_reference() -> None:
    assert full_finetune_bytes(1_000, 2, beta=0.04) == 1_000 * 2 * 5
    assert full_finetune_bytes(1_000, 4, beta=0.0) == 1_000 * 4 * 4
    # PPO's value model trained in full: its weights, gradients and two moments too.
    assert full_finetune_bytes(1_000, 2, beta=0.05, value_copies=4) == 1_000 * 2 * 9


def test_auto_lora_follows_memory_and_gradient_checkpointing_the_device() -> None:
    auto = PolicyConfig()
    trainer = trainer_config()
    # The paper's 1.5B policy in bf16: ~14 GiB fits an 80 GiB H100, not a 24 GiB card.
    h100 = plan_training(auto, trainer, "cuda", torch.bfloat16, 1_540_000_000, 80 * GIB)
    small_gpu = plan_training(auto, trainer, "cuda", torch.bfloat16, 1_540_000_000, 24 * GIB)
    laptop = plan_training(auto, trainer, "cpu", torch.float32, 135_000_000, 16 * GIB)
    assert (h100.lora, h100.gradient_checkpointing) == (False, True)
    assert (small_gpu.lora, small_gpu.gradient_checkpointing) == (True, True)
    assert (laptop.lora, laptop.gradient_checkpointing) == (False, False)
    assert "over half, so LoRA" in small_gpu.describe() and "fits" in h100.describe()
    # PPO's full value model makes the 1.5B policy ~25 GiB: still under half an H100, over half a 40 GiB card.
    ppo = TrainerConfig(algorithm="ppo")
    assert not plan_training(auto, ppo, "cuda", torch.bfloat16, 1_540_000_000, 80 * GIB).lora
    assert plan_training(auto, ppo, "cuda", torch.bfloat16, 1_540_000_000, 40 * GIB).lora
    assert not plan_training(auto, trainer, "cuda", torch.bfloat16, 1_540_000_000, 40 * GIB).lora


def test_explicit_settings_and_a_resumed_checkpoint_win_over_auto(tmp_path: Path) -> None:
    trainer = trainer_config()
    forced = PolicyConfig(lora=LoraConfig(enabled=False), gradient_checkpointing=True)
    plan = plan_training(forced, trainer, "cuda", torch.bfloat16, 10**10, 24 * GIB)
    assert (plan.lora, plan.gradient_checkpointing) == (False, True)
    # A run that started on a small GPU (LoRA) and resumes on a big one keeps its adapter, and the reverse.
    resumed = plan_training(
        PolicyConfig(), trainer, "cuda", torch.bfloat16, 1000, 80 * GIB, checkpoint_lora=True
    )
    assert resumed.lora and "as in the checkpoint" in resumed.describe()
    (tmp_path / "adapter").mkdir()
    assert checkpoint_holds_lora(tmp_path) is True
    assert checkpoint_holds_lora(tmp_path / "missing") is False and checkpoint_holds_lora(None) is None


def test_auto_settings_on_this_cpu_give_the_single_process_default(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    policy = build_policy(PolicyConfig(model=str(tiny_model_dir), device="cpu"), trainer_config(), tmp_path)
    assert policy.plan is not None and not policy.plan.lora and not policy.plan.gradient_checkpointing
    assert not policy.is_lora and not policy.model.is_activation_checkpointing


# --- gradient checkpointing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_is_on_and_leaves_the_step_unchanged(
    tiny_model_dir: Path, tmp_path: Path, lora: bool
) -> None:
    def policy_with(checkpointing: bool, where: str) -> Any:
        cfg = PolicyConfig(
            model=str(tiny_model_dir),
            device="cpu",
            dtype="float32",
            generation=GEN,
            gradient_checkpointing=checkpointing,
            lora=LoraConfig(enabled=lora, r=8, alpha=16, dropout=0.0),
        )
        return build_policy(cfg, trainer_config(), tmp_path / where)

    plain, checkpointed = policy_with(False, "plain"), policy_with(True, "checkpointed")
    assert checkpointed.plan.gradient_checkpointing and checkpointed.trainer.args.activation_checkpointing
    base = checkpointed.model.get_base_model() if lora else checkpointed.model
    assert base.is_activation_checkpointing and not plain.model.is_activation_checkpointing
    rollouts = plain.generate(CONVERSATIONS, 4, seed=5, key_prefix="it0001")
    rewards = rewards_for(rollouts)
    initial = torch.cat([p.detach().flatten().clone() for p in plain.model.parameters()])
    stats = [policy.update(rollouts, rewards) for policy in (plain, checkpointed)]
    assert stats[0]["grad_norm"] > 0
    assert stats[1]["grad_norm"] == pytest.approx(stats[0]["grad_norm"], rel=1e-5)
    # The same step up to float rounding (recomputed activations round differently, and Adam's first step,
    # about lr * sign(g), magnifies that for weights whose gradient is near its epsilon).
    steps = [
        torch.cat([p.detach().flatten() for p in policy.model.parameters()]) - initial
        for policy in (plain, checkpointed)
    ]
    assert steps[0].norm() > 0
    assert (steps[1] - steps[0]).norm() / steps[0].norm() < 1e-3
    # Sampling still works with checkpointing on (generation uses its own KV cache in eval mode).
    assert len(checkpointed.generate(CONVERSATIONS, 4, seed=6, key_prefix="it0002")) == 8


def test_the_gpu_settings_bf16_and_checkpointing_also_train_on_cpu(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What `auto` picks on a GPU (bf16 weights under accelerate's bf16 autocast, checkpointing on), run where
    the tests run: a real step that moves the weights."""
    cfg = PolicyConfig(
        model=str(tiny_model_dir), device="cpu", dtype="bfloat16", gradient_checkpointing=True, generation=GEN
    )
    policy = build_policy(cfg, trainer_config(), tmp_path)
    assert policy.model.dtype == torch.bfloat16 and policy.trainer.args.bf16
    rollouts = policy.generate(CONVERSATIONS, 4, seed=5, key_prefix="it0001")
    before = [p.detach().clone() for p in policy.model.parameters()]
    stats = policy.update(rollouts, rewards_for(rollouts))
    assert stats["grad_norm"] > 0
    assert max((a - b).abs().max().item() for a, b in zip(before, policy.model.parameters(), strict=True)) > 0


# --- vLLM rollouts ------------------------------------------------------------------------------------------------
class CopyEngine:
    """Stands in for TRL's `VLLMGeneration`: a separate copy of the policy that only changes when weights are
    pushed (`sync_weights`), sampling with the seed in `generation_kwargs`, in TRL's return format."""

    def __init__(
        self, trainer: Any, vllm_cfg: VLLMConfig, generation_cfg: GenerationConfig, rows: int
    ) -> None:
        self.trainer = trainer
        self.model = copy.deepcopy(trainer.model).eval()
        self.generation_kwargs: dict[str, Any] = {}
        self.max_new_tokens = generation_cfg.max_new_tokens
        self.temperature = generation_cfg.temperature
        self.pushes = 0
        self.batch_rows = rows

    def sync_weights(self) -> None:
        self.model.load_state_dict(self.trainer.model.state_dict())
        self.pushes += 1

    def generate(self, rows: list[list[int]], images: Any, num_generations: int) -> tuple:
        pad = self.trainer.processing_class.pad_token_id
        input_ids, mask = left_pad(rows, pad, 1, "cpu")
        if "seed" in self.generation_kwargs:
            torch.manual_seed(self.generation_kwargs["seed"])
        behaviour = BehaviourLogprobs(self.temperature)  # vLLM's processed log-probs: after temperature
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=True,
                temperature=self.temperature,
                max_new_tokens=self.max_new_tokens,
                logits_processor=[behaviour],
            )
        sampled = out[:, input_ids.shape[1] :].tolist()
        completions = [[t for t in row if t != pad] for row in sampled]
        # TRL's format with `logprobs=0`: per token, a list holding the sampled token's log-prob
        logprobs = [
            [[lp] for t, lp in zip(row, lps, strict=True) if t != pad]
            for row, lps in zip(sampled, behaviour.finish(out).tolist(), strict=True)
        ]
        return rows, completions, logprobs, None

    def same_weights_as_policy(self) -> bool:
        live = self.trainer.model.state_dict()
        return all(torch.equal(value, live[name]) for name, value in self.model.state_dict().items())


def test_vllm_rollouts_always_sample_from_the_current_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = PolicyConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", generation=GEN)
    trainer_cfg = trainer_config()
    policy = build_policy(cfg, trainer_cfg, tmp_path / "work")
    policy.vllm = VLLMRollouts(policy.trainer, VLLMConfig(), GEN, trainer_cfg, engine_factory=CopyEngine)
    engine = policy.vllm.engine
    assert engine.batch_rows == 8

    first = policy.generate(CONVERSATIONS, 4, seed=11, key_prefix="it0001")
    assert engine.pushes == 1 and engine.same_weights_as_policy()  # pushed before the first rollout
    assert [r.key for r in first] == [f"it0001-p{p}-g{g}" for p in range(2) for g in range(4)]
    assert all(r.prompt_ids and r.completion_ids for r in first)
    assert len({tuple(r.completion_ids) for r in first}) > 1  # sampled, not one greedy answer
    # The engine's log-probs are kept as the behaviour log-probs, with the version that sampled them
    assert all(r.policy_step == 0 and len(r.logprobs) == len(r.completion_ids) for r in first)
    policy.generate(CONVERSATIONS, 4, seed=11, key_prefix="it0001")
    assert engine.pushes == 1  # nothing changed, nothing pushed

    policy.update(first, rewards_for(first))
    assert not engine.same_weights_as_policy()  # the update moved the policy, not yet vLLM
    policy.generate(CONVERSATIONS, 4, seed=12, key_prefix="it0002")
    assert engine.pushes == 2 and engine.same_weights_as_policy()

    policy.save(tmp_path / "ckpt")
    assert policy.update(first, rewards_for(first))["staleness"] == 1.0  # trained against vLLM's log-probs
    policy.load(tmp_path / "ckpt")  # a resume: vLLM must get the restored weights
    policy.generate(CONVERSATIONS, 4, seed=13, key_prefix="it0003")
    assert engine.pushes == 3 and engine.same_weights_as_policy()


def test_only_server_mode_seeds_vllm_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A colocated engine samples a group's rows as separate requests under one SamplingParams: a seed there
    would make all G completions of a prompt identical."""
    cfg = PolicyConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", generation=GEN)
    policy = build_policy(cfg, trainer_config(), tmp_path)
    for mode, seeded in (("server", True), ("colocate", False)):
        policy.vllm = VLLMRollouts(
            policy.trainer, VLLMConfig(mode=mode), GEN, trainer_config(), engine_factory=CopyEngine
        )
        policy.generate(CONVERSATIONS, 4, seed=21, key_prefix="it0001")
        assert ("seed" in policy.vllm.engine.generation_kwargs) is seeded, mode


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_config_error_before_loading() -> None:
    with pytest.raises(ConfigError, match=r"policy.rollout.backend is 'vllm'.*pip install 'trl\[vllm\]'"):
        check_vllm(RolloutConfig(backend="vllm"), "cuda")
    cfg = PolicyConfig(model="/nonexistent", device="cpu", rollout={"backend": "vllm"})
    with pytest.raises(ConfigError, match="policy.rollout.backend"):  # before the missing model is noticed
        build_policy(cfg, trainer_config(), Path("/tmp/unused"))


# --- on a GPU -----------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
def test_gpu_policy_trains_in_bf16_with_checkpointing(tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = build_policy(PolicyConfig(model=str(tiny_model_dir), generation=GEN), trainer_config(), tmp_path)
    assert policy.device == "cuda" and policy.model.dtype == torch.bfloat16
    assert policy.plan.gradient_checkpointing and policy.model.is_activation_checkpointing
    rollouts = policy.generate(CONVERSATIONS, 4, seed=1, key_prefix="it0001")
    stats = policy.update(rollouts, rewards_for(rollouts))
    assert stats["grad_norm"] > 0 and stats["peak_memory_mb"] > 0


@pytest.mark.gpu
@requires_cuda
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm")
def test_colocated_vllm_rollouts_follow_the_policy(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = PolicyConfig(
        model=str(tiny_model_dir),
        generation=GEN,
        rollout={"backend": "vllm", "vllm": {"mode": "colocate", "gpu_memory_utilization": 0.2}},
    )
    policy = build_policy(cfg, trainer_config(), tmp_path)
    rollouts = policy.generate(CONVERSATIONS, 4, seed=1, key_prefix="it0001")
    assert len(rollouts) == 8 and policy.vllm.syncs == 1
    policy.update(rollouts, rewards_for(rollouts))
    policy.generate(CONVERSATIONS, 4, seed=2, key_prefix="it0002")
    assert policy.vllm.syncs == 2


def test_vllm_logprobs_become_behaviour_logprobs_only_when_whole() -> None:
    assert sampled_logprobs([[-0.5], [-1.25]]) == [-0.5, -1.25]
    assert sampled_logprobs([[-0.5], [None]]) is None  # vLLM reports a NaN log-prob as None
    assert sampled_logprobs([[-0.5], []]) is None
    assert sampled_logprobs(None) is None
