"""PPOPolicy on the tiny model: its gradients equal a plain reference PPO written here, failed judgments, LoRA,
checkpoints with the value model, and a run killed mid-way that resumes to the uninterrupted run's weights."""

from __future__ import annotations

import dataclasses
import signal
import statistics
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # offline env vars are set by conftest.py before this import

from mpo_agents.config import GenerationConfig, LoraConfig, PolicyConfig, TrainerConfig
from mpo_agents.errors import CheckpointError
from mpo_agents.policy import Rollout
from mpo_agents.policy.grpo import build_policy
from mpo_agents.policy.models import load_policy_model
from mpo_agents.policy.weight_checkpoints import checkpoint_dir, latest_checkpoint
from tests.support.tensors import max_rel_error, params

CONVERSATIONS = [
    [{"role": "user", "content": "Write about a cat."}],
    [{"role": "user", "content": "Write a short poem about the river city, please."}],
    [{"role": "user", "content": "Rain?"}],
]
GEN = GenerationConfig(max_new_tokens=10, temperature=0.9)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ppo_config(**changes: object) -> TrainerConfig:
    values = {
        "algorithm": "ppo",
        "learning_rate": 1e-2,
        "prompts_per_iteration": len(CONVERSATIONS),
        "max_prompt_length": 64,
        "max_grad_norm": 1e6,  # no clipping unless a test asks for it: the reference below does not clip
    }
    values.update(changes)
    return TrainerConfig(**values)


def make_policy(model_dir: Path, work_dir: Path, cfg: TrainerConfig, lora: bool = False):
    policy_cfg = PolicyConfig(
        model=str(model_dir),
        device="cpu",
        dtype="float32",
        generation=GEN,
        lora=LoraConfig(enabled=lora, r=4, alpha=8, dropout=0.0),
    )
    return build_policy(policy_cfg, cfg, work_dir)


def varied_lengths(rollouts: list[Rollout]) -> list[Rollout]:
    """The tiny policy never samples EOS, so every completion has the limit's length; cut two of them shorter so
    the batch has right padding (the maths does not care how a completion was sampled)."""
    cut = {0: 4, 2: 7}
    return [
        dataclasses.replace(r, completion_ids=r.completion_ids[: cut[i]], logprobs=None) if i in cut else r
        for i, r in enumerate(rollouts)
    ]


# --- 1. one PPO step equals a plain reference --------------------------------------------------------------------
def reference_ppo_gradients(
    model_dir: Path,
    value_state: dict[str, torch.Tensor],
    rollouts: list[Rollout],
    scores: list[float],
    cfg: TrainerConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float, float]:
    """PPO's first gradient the plain way: one unpadded row at a time, GAE as a Python loop per row, whitening
    with `statistics`, the loss summed token by token. The value model is the base transformer with a linear head
    carrying `value_state` (the policy's initial value weights). Returns (policy grads, value grads, policy loss,
    value loss)."""
    from transformers import AutoModel

    policy, _ = load_policy_model(model_dir, "cpu", torch.float32)
    reference, _ = load_policy_model(model_dir, "cpu", torch.float32)
    backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    head = torch.nn.Linear(backbone.config.hidden_size, 1)
    backbone.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in value_state.items() if k.startswith("backbone.")}
    )
    head.load_state_dict({"weight": value_state["head.weight"], "bias": value_state["head.bias"]})
    temperature, beta, ppo = GEN.temperature, cfg.beta, cfg.ppo

    def token_logprobs(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
        ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
        logits = model(input_ids=ids).logits[0, len(rollout.prompt_ids) - 1 : -1] / temperature
        return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(rollout.completion_ids)[:, None])[
            :, 0
        ]

    def token_values(rollout: Rollout) -> torch.Tensor:
        ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
        hidden = backbone(input_ids=ids).last_hidden_state[0, len(rollout.prompt_ids) - 1 : -1]
        return head(hidden)[:, 0]

    advantages, returns, old_logps, old_values = [], [], [], []
    with torch.no_grad():
        for rollout, score in zip(rollouts, scores, strict=True):
            logp, ref = token_logprobs(policy, rollout), token_logprobs(reference, rollout)
            values = token_values(rollout).tolist()
            rewards = [-beta * (a - b) for a, b in zip(logp.tolist(), ref.tolist(), strict=True)]
            rewards[-1] += score
            row, running = [], 0.0
            for t in reversed(range(len(rewards))):
                following = values[t + 1] if t + 1 < len(values) else 0.0
                running = rewards[t] + ppo.gamma * following - values[t] + ppo.gamma * ppo.lam * running
                row.insert(0, running)
            advantages.append(row)
            returns.append([a + v for a, v in zip(row, values, strict=True)])
            old_logps.append(logp)
            old_values.append(values)
    flat = [a for row in advantages for a in row]
    mean, std = statistics.fmean(flat), statistics.stdev(flat)  # stdev: the n - 1 variance
    tokens = len(flat)

    policy_total, value_total = torch.zeros(()), torch.zeros(())
    for i, rollout in enumerate(rollouts):
        ratio = torch.exp(token_logprobs(policy, rollout) - old_logps[i])
        values = token_values(rollout)
        for t in range(len(rollout.completion_ids)):
            advantage = (advantages[i][t] - mean) / (std**2 + 1e-8) ** 0.5
            clipped = torch.clamp(ratio[t], 1 - cfg.epsilon, 1 + cfg.epsilon)
            policy_total = policy_total + torch.maximum(-advantage * ratio[t], -advantage * clipped)
            old = old_values[i][t]
            kept = old + torch.clamp(values[t] - old, -ppo.cliprange_value, ppo.cliprange_value)
            value_total = value_total + torch.maximum(
                (values[t] - returns[i][t]) ** 2, (kept - returns[i][t]) ** 2
            )
    policy_term, value_term = policy_total / tokens, 0.5 * value_total / tokens
    (policy_term + ppo.vf_coef * value_term).backward()
    value_grads = {f"backbone.{n}": p.grad.clone() for n, p in backbone.named_parameters()}
    value_grads.update({f"head.{n}": p.grad.clone() for n, p in head.named_parameters()})
    policy_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    return policy_grads, value_grads, policy_term.item(), value_term.item()


def test_a_ppo_step_has_the_reference_gradients(tiny_model_dir, tmp_path):
    cfg = ppo_config(ppo={"epochs": 1, "minibatches": 1})
    policy = make_policy(tiny_model_dir, tmp_path / "ours", cfg)
    rollouts = varied_lengths(policy.generate(CONVERSATIONS, 1, seed=3, key_prefix="it0"))
    scores = [2.0, -1.0, 0.5]
    value_state = {k: v.clone() for k, v in policy.value.state_dict().items()}

    grads: dict[str, dict[str, torch.Tensor]] = {}

    def keep(name: str, model: torch.nn.Module) -> None:
        grads.setdefault(name, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    policy.trainer.optimizer.optimizer.register_step_pre_hook(lambda *_: keep("policy", policy.model))
    policy.value_optimizer.register_step_pre_hook(lambda *_: keep("value", policy.value))
    metrics = policy.update(rollouts, scores)

    policy_grads, value_grads, policy_term, value_term = reference_ppo_gradients(
        tiny_model_dir, value_state, rollouts, scores, cfg
    )
    assert max_rel_error(grads["policy"], policy_grads) < 1e-4
    assert max_rel_error(grads["value"], value_grads) < 1e-4
    assert metrics["policy_loss"] == pytest.approx(policy_term, abs=1e-5)
    assert metrics["value_loss"] == pytest.approx(value_term, rel=1e-4)
    assert metrics["kl"] == 0.0 and metrics["step"] == 1.0 and policy.step == 1
    assert metrics["reward_mean"] == pytest.approx(0.5)


def test_epochs_and_minibatches_step_the_optimizers_that_often(tiny_model_dir, tmp_path):
    cfg = ppo_config(ppo={"epochs": 3, "minibatches": 2}, max_grad_norm=0.5)
    policy = make_policy(tiny_model_dir, tmp_path, cfg)
    steps = {"policy": 0, "value": 0}
    policy.trainer.optimizer.optimizer.register_step_post_hook(
        lambda *_: steps.update(policy=steps["policy"] + 1)
    )
    policy.value_optimizer.register_step_post_hook(lambda *_: steps.update(value=steps["value"] + 1))
    rollouts = policy.generate(CONVERSATIONS, 1, seed=1, key_prefix="a")
    first = policy.update(rollouts, [1.0, 0.0, 3.0])
    assert (
        steps == {"policy": 6, "value": 6} and policy.step == 1
    )  # 3 epochs x 2 minibatches; one policy version
    second = policy.update(policy.generate(CONVERSATIONS, 1, seed=2, key_prefix="b"), [1.0, 0.0, 3.0])
    assert second["kl"] != 0.0  # the policy moved away from its reference
    assert first["grad_norm"] > 0.0 and first["value_loss"] > 0.0


def test_failed_judgments_are_left_out_and_none_scored_is_refused(tiny_model_dir, tmp_path):
    policy = make_policy(tiny_model_dir, tmp_path, ppo_config())
    rollouts = policy.generate(CONVERSATIONS, 1, seed=1, key_prefix="a")
    metrics = policy.update(rollouts, [1.0, None, 3.0])
    assert (metrics["num_scored"], metrics["num_failed"], metrics["reward_mean"]) == (2.0, 1.0, 2.0)
    with pytest.raises(ValueError, match="every reward in the batch is None"):
        policy.update(rollouts, [None, None, None])
    assert policy.step == 1


def test_lora_policy_and_value_train_only_their_adapters(tiny_model_dir, tmp_path):
    cfg = ppo_config(ppo={"value_lora": True, "epochs": 2})
    policy = make_policy(tiny_model_dir, tmp_path, cfg, lora=True)
    frozen = {n: p.clone() for n, p in policy.value.named_parameters() if not p.requires_grad}
    assert frozen and all("lora_" not in n for n in frozen)
    head = policy.value.head.weight.clone()
    metrics = policy.update(policy.generate(CONVERSATIONS, 1, seed=1, key_prefix="a"), [1.0, 0.0, 3.0])
    assert metrics["kl"] == 0.0  # the reference is the base with the adapter disabled: equal at the start
    second = policy.update(policy.generate(CONVERSATIONS, 1, seed=2, key_prefix="b"), [1.0, 0.0, 3.0])
    assert second["kl"] != 0.0
    assert all(torch.equal(p, frozen[n]) for n, p in policy.value.named_parameters() if n in frozen)
    assert not torch.equal(policy.value.head.weight, head)


# --- 2. checkpoints ---------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_resumes_bitwise_with_the_value_model(tiny_model_dir, tmp_path):
    cfg = ppo_config(ppo={"minibatches": 3})  # shuffled minibatches: the RNG state must come back too
    root = tmp_path / "checkpoints"
    original = make_policy(tiny_model_dir, tmp_path / "a", cfg)
    batch1 = original.generate(CONVERSATIONS, 1, seed=1, key_prefix="it0")
    original.update(batch1, [1.0, 2.0, 0.0])
    original.save(checkpoint_dir(root, original.step))
    assert (latest_checkpoint(root) / "value" / "weights.safetensors").is_file()
    batch2 = original.generate(CONVERSATIONS, 1, seed=2, key_prefix="it1")
    continued = original.update(batch2, [0.0, 1.0, 3.0])

    resumed = make_policy(tiny_model_dir, tmp_path / "b", cfg)
    resumed.load(latest_checkpoint(root))
    assert resumed.generate(CONVERSATIONS, 1, seed=2, key_prefix="it1") == batch2
    replayed = resumed.update(batch2, [0.0, 1.0, 3.0])
    assert replayed["loss"] == continued["loss"] and replayed["value_loss"] == continued["value_loss"]
    for ours, theirs in ((resumed.model, original.model), (resumed.value, original.value)):
        mine, other = params(ours), params(theirs)
        assert all(torch.equal(mine[k], other[k]) for k in mine)


def test_checkpoints_of_another_algorithm_are_refused(tiny_model_dir, tmp_path):
    grpo_cfg = TrainerConfig(
        num_generations=2, prompts_per_iteration=3, max_prompt_length=64, learning_rate=1e-2
    )
    grpo = make_policy(tiny_model_dir, tmp_path / "g", grpo_cfg)
    batch = grpo.generate(CONVERSATIONS, 2, seed=1, key_prefix="a")
    grpo.update(batch, [float(i) for i in range(len(batch))])  # weights that differ from the base's
    grpo.save(checkpoint_dir(tmp_path / "grpo", 1))
    ppo = make_policy(tiny_model_dir, tmp_path / "p", ppo_config())
    before = params(ppo.model)
    with pytest.raises(CheckpointError, match="written by a GRPO or RLOO run"):
        ppo.load(latest_checkpoint(tmp_path / "grpo"))
    after = params(ppo.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # refused before anything was loaded
    ppo.save(checkpoint_dir(tmp_path / "ppo", 0))
    with pytest.raises(CheckpointError, match="written by a PPO run"):
        grpo.load(latest_checkpoint(tmp_path / "ppo"))


# --- 3. a run killed mid-way resumes to the same weights ---------------------------------------------------------
KILL_SETTINGS = {
    "trainer.algorithm": "ppo",
    "trainer.prompts_per_iteration": 3,
    "schedule.iterations": 4,
    "schedule.meta_every": 2,
}


def _final(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    from tests.support.runs import summary

    final = max(p for p in (run_dir / "policy").glob("iter-*") if p.name[5:].isdigit())
    return {**summary(run_dir), "value": load_file(str(final / "value" / "weights.safetensors"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> dict:
    from tests.support import run_overrides
    from tests.support.cli import finish, run_command, start_mpo
    from tests.support.judge_server import JudgeServer

    run_dir = tmp_path_factory.mktemp("uninterrupted_ppo") / "run"
    with JudgeServer(latency=0.05) as server:
        finish(start_mpo(*run_command(run_dir, run_overrides(tiny_model_dir, server.url, **KILL_SETTINGS))))
    return _final(run_dir)


# After two updates whose checkpoint may not hold them yet; mid-iteration, after a checkpoint.
@pytest.mark.parametrize("kill_when", ["updates/iter-0002.json", "samples/iter-0003.jsonl"])
def test_sigkill_then_resume_equals_an_uninterrupted_ppo_run(
    tmp_path, tiny_model_dir, judge_server, uninterrupted, kill_when
):
    from tests.support import run_overrides
    from tests.support.cli import finish, run_command, start_mpo, wait_for

    server = judge_server(latency=0.05)  # slow enough for the kill to land where it should
    run_dir = tmp_path / "killed"
    process = start_mpo(*run_command(run_dir, run_overrides(tiny_model_dir, server.url, **KILL_SETTINGS)))
    wait_for((run_dir, kill_when), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    output = finish(start_mpo("resume", str(run_dir)))
    assert "Run finished" in output, output

    resumed = _final(run_dir)
    assert resumed["iterations"] == uninterrupted["iterations"] == [1, 2, 3, 4]
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"] == 4
    assert resumed["rubric_versions"] == uninterrupted["rubric_versions"]
    for part in ("weights", "value"):
        for name, tensor in uninterrupted[part].items():
            assert torch.equal(resumed[part][name], tensor), (part, name)
