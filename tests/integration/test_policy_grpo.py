"""TRLGRPOPolicy: the update is TRL's own GRPO step, generation is seeded, failed judgments, checkpoints."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.tensors import max_rel_error, params

torch = pytest.importorskip("torch")  # offline env vars are set by conftest.py before this import

from mpo_agents.config import GenerationConfig, PolicyConfig, TrainerConfig
from mpo_agents.errors import CheckpointError, ConfigError
from mpo_agents.policy import PolicyBackend, Rollout
from mpo_agents.policy.grpo import TRLGRPOPolicy, build_policy, grpo_config
from mpo_agents.policy.models import load_policy_model, resolve_device, resolve_dtype, resolve_model_dir
from mpo_agents.policy.weight_checkpoints import (
    COMPLETE_MARKER,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
)

CONVERSATIONS = [
    [{"role": "user", "content": "Write about a cat."}],
    [{"role": "user", "content": "Write a short poem about the river city, please."}],
]
GEN = GenerationConfig(max_new_tokens=12, temperature=0.9)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir  # the session's tiny model (build_tiny_model, seed 0): nothing here writes into it


def trainer_config(**changes: object) -> TrainerConfig:
    # A large learning rate so one step visibly moves a random tiny model; beta > 0 exercises the ref model.
    values = {
        "learning_rate": 1e-2,
        "beta": 0.04,
        "num_generations": 4,
        "prompts_per_iteration": 2,
        "max_prompt_length": 64,
    }
    values.update(changes)
    return TrainerConfig(**values)


def make_policy(model_dir: Path, work_dir: Path, cfg: TrainerConfig | None = None) -> TRLGRPOPolicy:
    policy_cfg = PolicyConfig(model=str(model_dir), device="cpu", dtype="float32", generation=GEN)
    return build_policy(policy_cfg, cfg or trainer_config(), work_dir)


def rewards_for(rollouts: list[Rollout]) -> list[float | None]:
    # Distinct scores within each group (so advantages are non-zero) that depend on the completion itself.
    return [float(len(r.completion_ids) % 5) + 0.5 * r.generation_index for r in rollouts]


# --- 1. the update is TRL's --------------------------------------------------------------------------------
def trl_reference_step(
    model_dir: Path, rollouts: list[Rollout], rewards: list[float | None], cfg: TrainerConfig, out: Path
) -> tuple[float, float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step of TRL's own `GRPOTrainer.train()` on the stored rollouts: its rollout_func replays them and its
    reward function looks scores up by key (written here independently of `mpo_agents.policy.grpo`).
    Returns (loss, pre-clip grad norm, gradients at on_pre_optimizer_step, parameters after the step)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    scores = {r.key: s for r, s in zip(rollouts, rewards, strict=True)}

    def replay(prompts: list, trainer: object) -> dict:
        assert len(prompts) == len(rollouts)
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": None,
            "key": [r.key for r in rollouts],
        }

    def lookup(prompts: list, completions: list, key: list[str], **_: object) -> list[float | None]:
        return [scores[k] for k in key]

    model, tokenizer = load_policy_model(model_dir, "cpu", torch.float32)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[lookup],
        args=grpo_config(cfg, GEN, "cpu", torch.float32, out, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * cfg.prompts_per_iteration}),
        processing_class=tokenizer,
        rollout_func=replay,
    )
    return train_one_step(trainer)


def train_one_step(trainer: object) -> tuple[float, float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A TRL trainer's `train()` for its one step: (loss, pre-clip grad norm, gradients at
    on_pre_optimizer_step, parameters after the step)."""
    from transformers import TrainerCallback

    captured: dict[str, torch.Tensor] = {}

    class CaptureGrads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            captured.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    trainer.add_callback(CaptureGrads())
    result = trainer.train()
    grad_norm = next(log["grad_norm"] for log in trainer.state.log_history if "grad_norm" in log)
    return result.training_loss, float(grad_norm), captured, params(trainer.model)


def unclip(grads: dict[str, torch.Tensor], norm: float, max_norm: float) -> dict[str, torch.Tensor]:
    """Undo `clip_grad_norm_` (same formula as torch) to recover the pre-clip gradients."""
    coef = min(1.0, max_norm / (norm + 1e-6))
    return {k: g / coef for k, g in grads.items()}


@pytest.mark.parametrize(
    ("settings", "failed"),
    [
        ({"loss_type": "grpo"}, []),  # grpo's loss value is ~0 by construction; dapo's is not
        ({"loss_type": "dapo"}, [2]),
        # Each algorithm preset, with a KL term kept so the reference model is exercised.
        *(({"algorithm": name, "beta": 0.04}, []) for name in ("dapo", "dr_grpo", "gspo", "cispo", "sapo")),
    ],
    ids=lambda value: "-".join(f"{v}" for v in value.values()) if isinstance(value, dict) else str(value),
)
def test_update_equals_trl_train_step(
    base_dir: Path, tmp_path: Path, settings: dict, failed: list[int]
) -> None:
    cfg = trainer_config(**settings, max_grad_norm=0.5)  # beta=0.04: the reference model is used
    policy = make_policy(base_dir, tmp_path / "ours", cfg)
    rollouts = policy.generate(CONVERSATIONS, cfg.num_generations, seed=3, key_prefix="it0")
    rewards = rewards_for(rollouts)
    for index in failed:
        rewards[index] = None

    ours: dict[str, torch.Tensor] = {}
    optimizer = policy.trainer.optimizer.optimizer  # the torch optimizer inside accelerate's wrapper
    hook = optimizer.register_step_pre_hook(
        lambda *_: ours.update({n: p.grad.detach().clone() for n, p in policy.model.named_parameters()})
    )
    metrics = policy.update(rollouts, rewards)
    hook.remove()

    loss, norm, theirs, their_params = trl_reference_step(base_dir, rollouts, rewards, cfg, tmp_path / "ref")

    assert metrics["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert metrics["grad_norm"] > cfg.max_grad_norm  # the clip path is exercised too
    # Peak resident memory of this process on CPU: at least the model, its reference copy and Adam's state.
    assert metrics["peak_memory_mb"] > sum(p.numel() for p in policy.model.parameters()) * 4 * 3 / 2**20
    # What the process holds after the update: still the model, its reference copy and Adam's state.
    assert metrics["memory_mb"] > sum(p.numel() for p in policy.model.parameters()) * 4 * 3 / 2**20
    assert max_rel_error(ours, theirs) < 1e-5
    pre_ours = unclip(ours, metrics["grad_norm"], cfg.max_grad_norm)
    assert max_rel_error(pre_ours, unclip(theirs, norm, cfg.max_grad_norm)) < 1e-5
    # Adam's first step is ~lr*sign(grad), so entries with near-zero gradients turn a 1e-7 gradient difference
    # into a visibly different step; compare the whole update by norm instead (measured ~2e-5).
    initial = params(load_policy_model(base_dir, "cpu", torch.float32)[0])
    after = params(policy.model)
    ours_update = {k: after[k] - initial[k] for k in after}
    their_update = {k: their_params[k] - initial[k] for k in after}
    assert max_rel_error(ours_update, their_update) < 1e-3
    assert metrics["kl"] == 0.0  # first step: policy == reference
    assert metrics["step"] == 1.0 and policy.step == 1
    assert metrics["staleness"] == 0.0  # sampled by the policy it trains: TRL's own on-policy step above


def trl_rloo_reference_step(
    model_dir: Path, rollouts: list[Rollout], rewards: list[float | None], cfg: TrainerConfig, out: Path
) -> tuple[float, float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step of TRL's own `RLOOTrainer.train()` on the stored rollouts. RLOOTrainer has no rollout_func, so
    its prompt tokenizer and its sampler are swapped for the stored ids here, and the reward function hands out
    the scores in row order after checking it was shown the stored completions (written independently of
    `mpo_agents.policy.grpo`). Returns what `trl_reference_step` returns."""
    from datasets import Dataset
    from trl import RLOOTrainer

    from mpo_agents.policy.grpo import rloo_config

    def lookup(prompts: list, completions: list, completion_ids: list, **_: object) -> list[float | None]:
        assert completion_ids == [r.completion_ids for r in rollouts]
        return list(rewards)

    model, tokenizer = load_policy_model(model_dir, "cpu", torch.float32)
    trainer = RLOOTrainer(
        model=model,
        reward_funcs=[lookup],
        args=rloo_config(cfg, GEN, "cpu", torch.float32, out, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * cfg.prompts_per_iteration}),
        processing_class=tokenizer,
    )
    trainer._tokenize_prompts = lambda prompts: ([r.prompt_ids for r in rollouts], None, {})
    trainer._generate_single_turn = lambda *_: [r.completion_ids for r in rollouts]
    return train_one_step(trainer)


@pytest.mark.parametrize(("algorithm", "failed"), [("rloo", []), ("reinforce_pp", [1])])
def test_rloo_update_equals_trl_rloo_train_step(
    base_dir: Path, tmp_path: Path, algorithm: str, failed: list[int]
) -> None:
    cfg = trainer_config(algorithm=algorithm, beta=0.05, max_grad_norm=0.5)
    policy = make_policy(base_dir, tmp_path / "ours", cfg)
    assert type(policy.trainer).__name__ == "RLOOTrainer"
    assert policy.trainer.normalize_advantages is (algorithm == "reinforce_pp")
    rollouts = policy.generate(CONVERSATIONS, cfg.num_generations, seed=5, key_prefix="it0")
    rewards = rewards_for(rollouts)
    for index in failed:
        rewards[index] = None

    ours: dict[str, torch.Tensor] = {}
    optimizer = policy.trainer.optimizer.optimizer
    hook = optimizer.register_step_pre_hook(
        lambda *_: ours.update({n: p.grad.detach().clone() for n, p in policy.model.named_parameters()})
    )
    metrics = policy.update(rollouts, rewards)
    hook.remove()

    loss, norm, theirs, their_params = trl_rloo_reference_step(
        base_dir, rollouts, rewards, cfg, tmp_path / "ref"
    )
    # The loss value is ~0 by construction (leave-one-out advantages sum to 0 in a group at ratio 1); the
    # gradients below are what differs between algorithms.
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert metrics["grad_norm"] > cfg.max_grad_norm
    assert max_rel_error(ours, theirs) < 1e-5
    initial = params(load_policy_model(base_dir, "cpu", torch.float32)[0])
    after = params(policy.model)
    assert (
        max_rel_error(
            {k: after[k] - initial[k] for k in after}, {k: their_params[k] - initial[k] for k in after}
        )
        < 1e-3
    )
    assert metrics["kl"] == 0.0 and metrics["step"] == 1.0
    assert metrics["num_failed"] == float(len(failed))


# --- 1b. a batch sampled one update earlier: its tokens weighted by truncated importance ratios ----------------
def token_logprobs(model: torch.nn.Module, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Each completion token's log-prob under `model`, scored as TRL scores it (logits times 1/T), by hand."""
    ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
    logits = model(input_ids=ids).logits[0, len(rollout.prompt_ids) - 1 : -1].float() * (1.0 / temperature)
    targets = torch.tensor(rollout.completion_ids).unsqueeze(-1)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)


def test_rollouts_carry_their_behaviour_logprobs(base_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(base_dir, tmp_path)
    rollouts = policy.generate(CONVERSATIONS, 4, seed=5, key_prefix="a")
    with torch.no_grad():
        for rollout in rollouts:
            assert rollout.policy_step == 0 and len(rollout.logprobs) == len(rollout.completion_ids)
            by_hand = token_logprobs(policy.model, rollout, GEN.temperature)
            assert torch.allclose(torch.tensor(rollout.logprobs), by_hand, atol=1e-5)
            assert Rollout.from_dict(rollout.to_dict()) == rollout
    # Records written before these fields existed still load, as on-policy rollouts without log-probs.
    old = {k: v for k, v in rollouts[0].to_dict().items() if k not in ("logprobs", "policy_step")}
    assert Rollout.from_dict(old).logprobs is None and Rollout.from_dict(old).policy_step is None


def hand_grpo_step(
    model: torch.nn.Module, rollouts: list[Rollout], rewards: list[float], cfg: TrainerConfig, behaviour: bool
) -> tuple[float, dict[str, torch.Tensor], float]:
    """TRL's "grpo" loss (beta 0, rewards centred per group, unscaled) with its truncated importance-sampling
    correction, written out: per token -min(ratio * A, clip(ratio) * A) * w, averaged over each completion, then
    over completions. The ratio is against the policy being updated (its own log-probs, detached: 1 in value);
    w = min(pi_now / pi_behaviour, cap) from the stored behaviour log-probs, or (`behaviour` off) 1. Also returns
    the largest untruncated weight."""
    model.zero_grad()
    groups = torch.tensor(rewards).view(-1, cfg.num_generations)
    advantages = (groups - groups.mean(dim=1, keepdim=True)).flatten()
    losses, largest = [], 0.0
    for rollout, advantage in zip(rollouts, advantages, strict=True):
        now = token_logprobs(model, rollout, GEN.temperature)
        ratio = torch.exp(now - now.detach())
        clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + cfg.epsilon)
        weight = torch.ones_like(now)
        if behaviour:
            weight = torch.exp(now.detach() - torch.tensor(rollout.logprobs))
            largest = max(largest, weight.max().item())
            weight = torch.clamp(weight, max=cfg.importance_sampling_cap)
        losses.append((-torch.min(ratio * advantage, clipped * advantage) * weight).mean())
    loss = torch.stack(losses).mean()
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}, largest


def test_a_stale_batch_is_trained_with_truncated_importance_weights(base_dir: Path, tmp_path: Path) -> None:
    import copy

    # No KL term, no reward scaling, no clipping of the gradient norm: the weights are what is under test. A cap
    # just above 1, so that some tokens' weights are truncated.
    cfg = trainer_config(
        beta=0.0, loss_type="grpo", scale_rewards="none", max_grad_norm=1e6, importance_sampling_cap=1.05
    )
    policy = make_policy(base_dir, tmp_path, cfg)
    stale = policy.generate(CONVERSATIONS, cfg.num_generations, seed=1, key_prefix="a")  # by version 0
    fresh = policy.generate(CONVERSATIONS, cfg.num_generations, seed=2, key_prefix="b")
    assert policy.update(fresh, rewards_for(fresh))["staleness"] == 0.0

    def version_one() -> torch.nn.Module:
        # A plain copy of version 1, which trains on the batch version 0 sampled (a deepcopy of the policy's
        # model would keep TRL's forward patch, bound to the policy's own model).
        model = load_policy_model(base_dir, "cpu", torch.float32)[0]
        model.load_state_dict(state)
        return model

    state = copy.deepcopy(policy.model.state_dict())
    before = version_one()

    ours: dict[str, torch.Tensor] = {}
    optimizer = policy.trainer.optimizer.optimizer
    hook = optimizer.register_step_pre_hook(
        lambda *_: ours.update({n: p.grad.detach().clone() for n, p in policy.model.named_parameters()})
    )
    rewards = rewards_for(stale)
    metrics = policy.update(stale, rewards)
    hook.remove()
    assert metrics["staleness"] == 1.0

    with torch.no_grad():  # the policy moved: weights of 1 would be wrong here
        drift = max(
            (token_logprobs(before, r, GEN.temperature) - torch.tensor(r.logprobs)).abs().max().item()
            for r in stale
        )
    assert drift > 0.05
    loss, expected, largest = hand_grpo_step(before, stale, rewards, cfg, behaviour=True)
    assert largest > cfg.importance_sampling_cap  # the truncation is exercised
    on_policy_loss, on_policy_maths, _ = hand_grpo_step(version_one(), stale, rewards, cfg, behaviour=False)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-6)
    assert max_rel_error(ours, expected) < 1e-4
    assert max_rel_error(ours, on_policy_maths) > 1e-2
    assert loss != pytest.approx(on_policy_loss, rel=1e-3)
    # Only the loss of an off-policy batch runs under TRL's vLLM flag (what gates its correction); not after it.
    assert not policy.trainer.use_vllm


def test_a_stale_batch_without_logprobs_or_from_a_later_policy_is_refused(
    base_dir: Path, tmp_path: Path
) -> None:
    import dataclasses

    policy = make_policy(base_dir, tmp_path)
    batch = policy.generate(CONVERSATIONS, 4, seed=1, key_prefix="a")
    policy.update(batch, rewards_for(batch))
    without = [dataclasses.replace(r, logprobs=None) for r in batch]
    with pytest.raises(ValueError, match="1 policy version.*no behaviour log-probs"):
        policy.update(without, rewards_for(batch))
    ahead = [dataclasses.replace(r, policy_step=5) for r in batch]
    with pytest.raises(ValueError, match="policy version 5, ahead of this policy"):
        policy.update(ahead, rewards_for(batch))
    mixed = [dataclasses.replace(r, policy_step=i % 2) for i, r in enumerate(batch)]
    with pytest.raises(ValueError, match="several policy versions"):
        policy.update(mixed, rewards_for(batch))
    assert policy.step == 1  # nothing was applied


def test_grpo_config_mirrors_our_config(tmp_path: Path) -> None:
    cfg = trainer_config(loss_type="dr_grpo", scale_rewards="batch", epsilon=0.3, weight_decay=0.1, seed=7)
    args = grpo_config(cfg, GEN, "cpu", torch.float32, tmp_path)
    assert (args.learning_rate, args.beta, args.loss_type, args.scale_rewards) == (
        1e-2,
        0.04,
        "dr_grpo",
        "batch",
    )
    assert (args.epsilon, args.weight_decay, args.seed, args.max_grad_norm) == (0.3, 0.1, 7, 1.0)
    assert (args.num_generations, args.per_device_train_batch_size, args.steps_per_generation) == (4, 8, 1)
    assert (args.max_completion_length, args.temperature, args.top_p) == (12, 0.9, 1.0)
    assert args.num_iterations == 1 and not args.bf16 and not args.fp16 and args.use_cpu
    assert args.lr_scheduler_type == "constant" and not args.gradient_checkpointing


def test_reference_model_is_the_initial_policy(base_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(base_dir, tmp_path)
    initial = params(policy.model)
    rollouts = policy.generate(CONVERSATIONS, 4, seed=0, key_prefix="a")
    policy.update(rollouts, rewards_for(rollouts))
    second = policy.update(rollouts, rewards_for(rollouts))
    reference = dict(policy.trainer.ref_model.named_parameters())
    assert all(torch.equal(initial[k], reference[k]) for k in initial)
    assert second["kl"] > 0.0


# --- 2. generation -------------------------------------------------------------------------------------------
def teach_eos(model_dir: Path, out_dir: Path) -> Path:
    """A copy of the tiny model trained for a few steps to answer with an immediate <|im_end|>."""
    model, tokenizer = load_policy_model(model_dir, "cpu", torch.float32)
    text = tokenizer.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(30):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def check_rollout_shape(policy: TRLGRPOPolicy, rollouts: list[Rollout], groups: int, size: int) -> None:
    eos = set(policy.trainer.eos_token_ids)
    assert [(r.prompt_index, r.generation_index) for r in rollouts] == [
        (p, g) for p in range(groups) for g in range(size)
    ]
    for r in rollouts:
        assert r.key == f"it7-p{r.prompt_index}-g{r.generation_index}"
        assert r.completion == policy.tokenizer.decode(r.completion_ids, skip_special_tokens=True)
        assert not eos & set(r.completion_ids[:-1])  # cut right after the first EOS
        if r.truncated:
            assert len(r.completion_ids) == GEN.max_new_tokens and r.completion_ids[-1] not in eos
        else:
            assert r.completion_ids[-1] in eos


def test_generate_is_seeded_grouped_and_flags_truncation(base_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(base_dir, tmp_path / "a")
    assert isinstance(policy, PolicyBackend)
    first = policy.generate(CONVERSATIONS, 3, seed=11, key_prefix="it7")
    again = policy.generate(CONVERSATIONS, 3, seed=11, key_prefix="it7")
    other = policy.generate(CONVERSATIONS, 3, seed=12, key_prefix="it7")
    assert len(first) == 6 and [r.to_dict() for r in first] == [r.to_dict() for r in again]
    assert [r.completion_ids for r in first] != [r.completion_ids for r in other]
    assert Rollout.from_dict(first[0].to_dict()) == first[0]
    assert first[0].prompt_ids == first[2].prompt_ids != first[3].prompt_ids
    check_rollout_shape(policy, first, groups=2, size=3)
    assert any(r.truncated for r in first)  # a random 512-token model rarely says EOS within 12 tokens
    assert policy.model.training  # back in train mode for the next update

    eos_policy = make_policy(teach_eos(base_dir, tmp_path / "eos"), tmp_path / "b")
    ended = eos_policy.generate(CONVERSATIONS, 4, seed=0, key_prefix="it7")
    check_rollout_shape(eos_policy, ended, groups=2, size=4)
    assert any(not r.truncated for r in ended)


def test_the_policy_is_loaded_and_run_on_one_thread_of_its_own(
    base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second thread doing torch work starts a second OpenMP team, whose spinning slowed generation ~20%
    # (docs/benchmarks.md): the model is loaded where the rollouts and updates then run.
    from mpo_agents.policy import models

    loaded_on: list[int] = []
    load = models.load_policy_model

    def spy(*args: object, **kwargs: object) -> object:
        loaded_on.append(threading.get_ident())
        return load(*args, **kwargs)

    monkeypatch.setattr(models, "load_policy_model", spy)
    policy = make_policy(base_dir, tmp_path)
    forwards_on: set[int] = set()
    policy.model.register_forward_pre_hook(lambda module, inputs: forwards_on.add(threading.get_ident()))
    rollouts = policy.generate(CONVERSATIONS, 4, seed=3, key_prefix="it1")
    policy.update(rollouts, rewards_for(rollouts))
    assert len(loaded_on) == 1 and loaded_on[0] != threading.get_ident()
    assert forwards_on == set(loaded_on)
    policy.close()


def test_generate_left_truncates_long_prompts(base_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(base_dir, tmp_path, trainer_config(max_prompt_length=10))
    rollouts = policy.generate([[{"role": "user", "content": "cat " * 50}]], 2, seed=0, key_prefix="x")
    full = policy.tokenizer.apply_chat_template(
        [{"role": "user", "content": "cat " * 50}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert rollouts[0].prompt_ids == list(full)[-10:]  # the assistant header survives


# --- 3. failed judgments ----------------------------------------------------------------------------------------
def test_none_rewards_get_zero_advantage_and_all_none_raises(base_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(base_dir, tmp_path)
    rollouts = policy.generate(CONVERSATIONS, 4, seed=5, key_prefix="n")
    rewards = rewards_for(rollouts)
    rewards[1] = rewards[6] = None
    before = params(policy.model)
    metrics = policy.update(rollouts, rewards)
    assert metrics["num_failed"] == 2.0 and metrics["num_scored"] == 6.0
    # TRL's completion log (private, but it is exactly the behaviour we rely on): unscorable rows get advantage 0
    # and the others are normalised without them.
    advantages = list(policy.trainer._logs["advantages"])
    assert advantages[1] == 0.0 and advantages[6] == 0.0
    assert sum(advantages[0:4]) == pytest.approx(0.0, abs=1e-5)
    assert any(not torch.equal(before[k], p) for k, p in params(policy.model).items())

    with pytest.raises(ValueError, match="None"):
        policy.update(rollouts, [None] * len(rollouts))
    assert policy.step == 1


def test_update_refuses_misgrouped_batches(base_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(base_dir, tmp_path)
    rollouts = policy.generate(CONVERSATIONS, 4, seed=5, key_prefix="m")
    with pytest.raises(ValueError, match="prompt-major"):
        policy.update(rollouts[1:] + rollouts[:1], rewards_for(rollouts))
    with pytest.raises(ValueError, match="multiple"):
        policy.update(rollouts[:3], rewards_for(rollouts[:3]))
    assert policy.step == 0


# --- 4. checkpoints ---------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_resumes_bitwise(base_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    original = make_policy(base_dir, tmp_path / "a")
    batch1 = original.generate(CONVERSATIONS, 4, seed=1, key_prefix="it0")
    original.update(batch1, rewards_for(batch1))
    original.save(checkpoint_dir(root, original.step))
    batch2 = original.generate(CONVERSATIONS, 4, seed=2, key_prefix="it1")
    continued = original.update(batch2, rewards_for(batch2))

    resumed = make_policy(base_dir, tmp_path / "b")  # fresh process stand-in: built from the BASE model
    resumed.load(latest_checkpoint(root))
    assert resumed.step == 1
    assert resumed.generate(CONVERSATIONS, 4, seed=2, key_prefix="it1") == batch2
    replayed = resumed.update(batch2, rewards_for(batch2))

    assert replayed["loss"] == continued["loss"] and replayed["kl"] == continued["kl"]
    ours, theirs = params(resumed.model), params(original.model)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resumed.step == original.step == 2


def test_a_stale_batch_replays_bitwise_from_its_stored_record(base_dir: Path, tmp_path: Path) -> None:
    """A resume applies a one-update-stale batch again from rollouts/ as written (JSON), with the same result."""
    import json

    root = tmp_path / "checkpoints"
    original = make_policy(base_dir, tmp_path / "a")
    stale = original.generate(CONVERSATIONS, 4, seed=1, key_prefix="it0")
    fresh = original.generate(CONVERSATIONS, 4, seed=2, key_prefix="it1")
    original.update(fresh, rewards_for(fresh))
    original.save(checkpoint_dir(root, original.step))
    continued = original.update(stale, rewards_for(stale))

    stored = [Rollout.from_dict(json.loads(json.dumps(r.to_dict()))) for r in stale]
    assert stored == stale
    resumed = make_policy(base_dir, tmp_path / "b")
    resumed.load(latest_checkpoint(root))
    replayed = resumed.update(stored, rewards_for(stored))

    assert replayed["staleness"] == continued["staleness"] == 1.0
    assert replayed["loss"] == continued["loss"]
    ours, theirs = params(resumed.model), params(original.model)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_incomplete_checkpoints_are_ignored_and_pruning_keeps_newest(base_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    policy = make_policy(base_dir, tmp_path / "a")
    for step in (1, 2, 3):
        policy.trainer.state.global_step = step
        policy.save(checkpoint_dir(root, step))
    assert latest_checkpoint(root) == checkpoint_dir(root, 3)
    # What a SIGKILL mid-save leaves: a staging dir (even with a plausible name) without COMPLETE.
    killed = checkpoint_dir(root, 4).with_name("iter-000004.tmp")
    (killed / "model").mkdir(parents=True)
    unmarked = checkpoint_dir(root, 5)
    unmarked.mkdir()
    assert latest_checkpoint(root) == checkpoint_dir(root, 3)
    with pytest.raises(CheckpointError):
        policy.load(unmarked)

    deleted = prune_checkpoints(root, keep=2)
    assert sorted(p.name for p in deleted) == ["iter-000001"]
    assert sorted(p.name for p in root.iterdir()) == [
        "iter-000002",
        "iter-000003",
        "iter-000004.tmp",
        "iter-000005",
    ]
    assert (checkpoint_dir(root, 3) / COMPLETE_MARKER).is_file()

    policy.save(checkpoint_dir(root, 3))  # saving a step again (re-run node after a resume) replaces it whole
    assert latest_checkpoint(root) == checkpoint_dir(root, 3)
    assert not checkpoint_dir(root, 3).with_name("iter-000003.tmp").exists()


def test_model_resolution_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy.model"):
        resolve_model_dir(str(tmp_path / "nope"))
    assert resolve_dtype(PolicyConfig(device="cpu"), "cpu") == torch.float32
    with pytest.raises(ConfigError, match="policy.dtype"):
        resolve_dtype(PolicyConfig(device="cpu", dtype="float16"), "cpu")
    if not torch.cuda.is_available():
        assert resolve_device(PolicyConfig(device="auto")) in ("cpu", "mps")
        with pytest.raises(ConfigError, match="policy.device"):
            resolve_device(PolicyConfig(device="cuda"))


# --- real model ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_converts_generates_and_updates(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # A second process converting into the same cache at the same time waits on the lock and reuses the result.
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from mpo_agents.policy.models import resolve_model_dir as r; print(r('smollm2-135m', {str(cache)!r}))",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    model_dir = resolve_model_dir("smollm2-135m", cache_dir=cache)
    assert other.communicate(timeout=300)[0].strip() == str(model_dir) and other.returncode == 0
    assert resolve_model_dir("smollm2-135m", cache_dir=cache) == model_dir
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [model_dir.name]
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "chat_template.jinja").is_file()
    gen = GenerationConfig(max_new_tokens=64)
    policy_cfg = PolicyConfig(model=str(model_dir), device="cpu", dtype="float32", generation=gen)
    policy = build_policy(
        policy_cfg, TrainerConfig(num_generations=4, prompts_per_iteration=2), tmp_path / "w"
    )
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write one sentence about rivers."}],
    ]
    rollouts = policy.generate(conversations, 4, seed=0, key_prefix="it0")
    assert len(rollouts) == 8 and any(r.completion.strip() for r in rollouts)
    metrics = policy.update(rollouts, [float(len(r.completion) % 7) for r in rollouts])
    assert metrics["grad_norm"] > 0 and policy.step == 1
    policy.save(checkpoint_dir(tmp_path / "ckpt", 1))
    assert latest_checkpoint(tmp_path / "ckpt") == checkpoint_dir(tmp_path / "ckpt", 1)
