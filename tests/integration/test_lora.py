"""LoRA policies (`policy.lora.enabled`): only the adapter trains, the KL reference is the base model with the
adapter disabled (no second copy), adapter-only checkpoints resume bit-identically, kinds cannot be mixed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")  # offline env vars are set by conftest.py before this import
pytest.importorskip("peft")

from safetensors.torch import load_file

from mpo_agents.config import GenerationConfig, LoraConfig, PolicyConfig, TrainerConfig
from mpo_agents.errors import CheckpointError
from mpo_agents.policy import Rollout
from mpo_agents.policy.grpo import TRLGRPOPolicy, build_policy
from mpo_agents.policy.models import load_policy_model
from mpo_agents.policy.weight_checkpoints import ADAPTER_DIR, MODEL_DIR, checkpoint_dir, latest_checkpoint
from tests.support.tensors import params

CONVERSATIONS = [
    [{"role": "user", "content": "Write about a cat."}],
    [{"role": "user", "content": "Write a short poem about the river city, please."}],
]
GEN = GenerationConfig(max_new_tokens=12, temperature=0.9)
# A small rank keeps the tiny model fast; the dropout is the paper's, so resume must restore its RNG stream.
LORA = LoraConfig(enabled=True, r=8, alpha=16, dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_policy(
    model_dir: Path, work_dir: Path, lora: LoraConfig | None = LORA, **trainer: Any
) -> TRLGRPOPolicy:
    values: dict[str, Any] = {
        "learning_rate": 1e-2,  # large, so one step visibly moves the adapter
        "beta": 0.04,  # > 0: the KL reference is used
        "num_generations": 4,
        "prompts_per_iteration": 2,
        "max_prompt_length": 64,
        **trainer,
    }
    policy_cfg = PolicyConfig(
        model=str(model_dir),
        device="cpu",
        dtype="float32",
        generation=GEN,
        lora=lora if lora is not None else LoraConfig(),
    )
    return build_policy(policy_cfg, TrainerConfig(**values), work_dir)


def rewards_for(rollouts: list[Rollout]) -> list[float | None]:
    return [float(len(r.completion_ids) % 5) + 0.5 * r.generation_index for r in rollouts]


def base_view(policy: TRLGRPOPolicy) -> dict[str, torch.Tensor]:
    """The PEFT model's base weights under the plain model's parameter names."""
    return {
        name.removeprefix("base_model.model.").replace(".base_layer.", "."): p.detach().clone()
        for name, p in policy.model.named_parameters()
        if "lora_" not in name
    }


def adapter(policy: TRLGRPOPolicy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" in n}


def optimizer_state(policy: TRLGRPOPolicy) -> tuple[dict[int, dict[str, torch.Tensor]], list[dict]]:
    state = policy.trainer.optimizer.state_dict()
    tensors = {i: {k: v.clone() for k, v in s.items()} for i, s in state["state"].items()}
    return tensors, state["param_groups"]


def test_update_trains_only_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(tiny_model_dir, tmp_path)
    base = params(load_policy_model(tiny_model_dir, "cpu", torch.float32)[0])
    lora_before = adapter(policy)
    assert policy.is_lora and lora_before
    # 7 projections x 2 layers, each A (r x in) and B (out x r): q/o 64x64, k/v 64x32, gate/up/down 64x128.
    per_layer = LORA.r * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert policy.trainable_parameters == sum(p.numel() for p in lora_before.values()) == 2 * per_layer
    assert policy.total_parameters == sum(p.numel() for p in base.values()) + policy.trainable_parameters
    assert all(p.requires_grad == ("lora_" in n) for n, p in policy.model.named_parameters())
    # TRL's disable_dropout zeroes every dropout; the adapter's own (policy.lora.dropout) is put back.
    dropouts = {n: m.p for n, m in policy.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts and all(
        p == (LORA.dropout if ".lora_dropout." in n else 0.0) for n, p in dropouts.items()
    )

    rollouts = policy.generate(CONVERSATIONS, 4, seed=3, key_prefix="it0")
    stats = policy.update(rollouts, rewards_for(rollouts))
    assert stats["trainable_params"] == float(policy.trainable_parameters)
    assert stats["grad_norm"] > 0 and stats["kl"] == 0.0  # B starts at 0: step 1's policy is the reference

    lora_after = adapter(policy)
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before)
    live_base = base_view(policy)
    assert live_base.keys() == base.keys()
    assert all(torch.equal(base[k], live_base[k]) for k in base)  # every base weight bit-identical


def test_reference_is_the_base_model_with_the_adapter_disabled(tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(tiny_model_dir, tmp_path)
    trainer = policy.trainer
    assert trainer.ref_model is None and list(policy.model.peft_config) == ["default"]  # no second copy

    captured: list[dict[str, Any]] = []
    produce = trainer._generate_and_score_completions  # TRL's batch incl. ref_per_token_logps (private)
    trainer._generate_and_score_completions = lambda inputs: captured.append(produce(inputs)) or captured[-1]
    rollouts = policy.generate(CONVERSATIONS, 4, seed=3, key_prefix="it0")
    policy.update(rollouts, rewards_for(rollouts))
    second = policy.update(rollouts, rewards_for(rollouts))  # now the adapter is non-zero
    assert second["kl"] > 0.0

    # Independently: the base model from disk, one unpadded sequence at a time, logits scaled by temperature.
    base = load_policy_model(tiny_model_dir, "cpu", torch.float32)[0].eval()
    batch = captured[-1]
    for row, rollout in enumerate(rollouts):
        ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
        with torch.no_grad():
            logits = base(input_ids=ids).logits[0, len(rollout.prompt_ids) - 1 : -1] / GEN.temperature
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(rollout.completion_ids)[:, None])[:, 0]
        length = int(batch["completion_mask"][row].sum())
        assert length == len(rollout.completion_ids)
        torch.testing.assert_close(batch["ref_per_token_logps"][row, :length], expected, rtol=1e-4, atol=1e-4)

    # Generation samples with the adapter on: the same seed with the adapter disabled gives other tokens.
    adapted = policy.generate(CONVERSATIONS, 4, seed=9, key_prefix="g")
    with policy.model.disable_adapter():
        plain = policy.generate(CONVERSATIONS, 4, seed=9, key_prefix="g")
    assert [r.completion_ids for r in adapted] != [r.completion_ids for r in plain]


def test_adapter_checkpoint_resumes_bitwise(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    original = make_policy(tiny_model_dir, tmp_path / "a")
    batch1 = original.generate(CONVERSATIONS, 4, seed=1, key_prefix="it0")
    original.update(batch1, rewards_for(batch1))
    original.save(checkpoint_dir(root, original.step))
    saved_adapter, (saved_moments, saved_groups) = adapter(original), optimizer_state(original)
    batch2 = original.generate(CONVERSATIONS, 4, seed=2, key_prefix="it1")
    continued = original.update(batch2, rewards_for(batch2))

    directory = latest_checkpoint(root)
    assert directory == checkpoint_dir(root, 1)
    assert (directory / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert not (directory / MODEL_DIR).exists()  # the base weights are not written again
    assert all(
        "lora_" in key for key in load_file(str(directory / ADAPTER_DIR / "adapter_model.safetensors"))
    )

    resumed = make_policy(tiny_model_dir, tmp_path / "b")  # fresh process stand-in: built from the BASE model
    resumed.load(directory)
    assert resumed.step == 1
    loaded = adapter(resumed)
    assert all(torch.equal(saved_adapter[k], loaded[k]) for k in saved_adapter)
    moments, groups = optimizer_state(resumed)
    assert groups == json.loads(json.dumps(saved_groups))  # stored as JSON: tuples come back as lists
    assert moments.keys() == saved_moments.keys()
    assert all(torch.equal(saved_moments[i][k], moments[i][k]) for i in moments for k in moments[i])

    assert resumed.generate(CONVERSATIONS, 4, seed=2, key_prefix="it1") == batch2
    replayed = resumed.update(batch2, rewards_for(batch2))
    assert replayed["loss"] == continued["loss"] and replayed["kl"] == continued["kl"]
    assert replayed["grad_norm"] == continued["grad_norm"]
    ours, theirs = params(resumed.model), params(original.model)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resumed.step == original.step == 2


def test_checkpoint_kind_must_match_the_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    lora_policy = make_policy(tiny_model_dir, tmp_path / "lora")
    lora_policy.save(checkpoint_dir(tmp_path / "lora-ckpt", 0))
    full_policy = make_policy(tiny_model_dir, tmp_path / "full", lora=None)
    assert not full_policy.is_lora and full_policy.trainer.ref_model is not None  # full path unchanged
    full_policy.save(checkpoint_dir(tmp_path / "full-ckpt", 0))

    with pytest.raises(CheckpointError, match=r"policy\.lora\.enabled=false"):
        full_policy.load(checkpoint_dir(tmp_path / "lora-ckpt", 0))
    with pytest.raises(CheckpointError, match=r"policy\.lora\.enabled=true"):
        lora_policy.load(checkpoint_dir(tmp_path / "full-ckpt", 0))
    other_rank = make_policy(tiny_model_dir, tmp_path / "r4", lora=LORA.model_copy(update={"r": 4}))
    with pytest.raises(CheckpointError, match=r"policy\.lora\.r=4"):
        other_rank.load(checkpoint_dir(tmp_path / "lora-ckpt", 0))
    assert lora_policy.step == full_policy.step == other_rank.step == 0


def test_all_linear_leaves_the_tied_lm_head_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = make_policy(
        tiny_model_dir, tmp_path, lora=LORA.model_copy(update={"target_modules": "all-linear"}), beta=0.0
    )
    adapted = {n.split(".lora_")[0] for n in adapter(policy)}
    assert len(adapted) == 14 and not any("lm_head" in n for n in adapted)
    rollouts = policy.generate(CONVERSATIONS, 4, seed=0, key_prefix="x")
    assert policy.update(rollouts, rewards_for(rollouts))["grad_norm"] > 0
