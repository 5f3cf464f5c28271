"""`trainer.algorithm`: each name resolves to the TRL `GRPOConfig` or `RLOOConfig` fields (or PPO settings) its
paper sets, every one of them still overridable, and the combinations that cannot train are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpo_agents.config import GenerationConfig, MPOConfig, config_reference, load_config, redacted_dump
from mpo_agents.errors import ConfigError
from mpo_agents.policy.grpo import grpo_config, rloo_config

# Written from the papers (see the sources under docs/config.md's table), not read from the presets.
EXPECTED = {
    "grpo": ("grpo", 0.04, 0.2, None, "group", "token", False),  # epsilon_high None: TRL uses epsilon
    "dapo": ("dapo", 0.0, 0.2, 0.28, "group", "token", True),
    "dr_grpo": ("dr_grpo", 0.0, 0.2, None, "none", "token", False),
    "gspo": ("grpo", 0.0, 3e-4, 4e-4, "group", "sequence", False),
    "cispo": ("cispo", 0.0, 0.2, 5.0, "group", "token", False),
    "sapo": ("sapo", 0.0, 0.2, None, "group", "token", False),
}


def trl_fields(sets: list[str], tmp_path: Path) -> tuple:
    config = load_config(None, sets)
    args = grpo_config(config.trainer, GenerationConfig(), "cpu", torch.float32, tmp_path)
    return (
        args.loss_type,
        args.beta,
        args.epsilon,
        args.epsilon_high,
        args.scale_rewards,
        args.importance_sampling_level,
        args.mask_truncated_completions,
    )


@pytest.mark.parametrize("algorithm", sorted(EXPECTED))
def test_each_algorithm_sets_the_trl_fields_of_its_paper(algorithm, tmp_path):
    assert trl_fields([f"trainer.algorithm={algorithm}"], tmp_path) == pytest.approx(EXPECTED[algorithm])


def test_a_field_the_config_sets_wins_over_the_preset(tmp_path):
    sets = ["trainer.algorithm=dapo", "trainer.beta=0.01", "trainer.mask_truncated_completions=false"]
    assert trl_fields(sets, tmp_path) == pytest.approx(("dapo", 0.01, 0.2, 0.28, "group", "token", False))
    # The default algorithm is grpo: a config that names none trains as before the presets existed.
    assert trl_fields([], tmp_path) == pytest.approx(EXPECTED["grpo"])


def test_the_other_trl_fields_are_passed_through(tmp_path):
    config = load_config(None, ["trainer.top_entropy_quantile=0.2", "trainer.off_policy_mask_threshold=0.5"])
    args = grpo_config(config.trainer, GenerationConfig(), "cpu", torch.float32, tmp_path)
    assert (args.top_entropy_quantile, args.off_policy_mask_threshold) == (0.2, 0.5)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["trainer.loss_type=luspo"], "set importance_sampling_level: sequence"),
        (["trainer.algorithm=gspo", "trainer.loss_type=vespo"], "set importance_sampling_level: token"),
        (["trainer.loss_type=vespo", "schedule.pipeline=one_step"], "set schedule.pipeline: off"),
        (["trainer.algorithm=rloo", "trainer.loss_type=dapo"], "trainer.loss_type is a field of TRL's GRPO"),
        (["trainer.algorithm=rloo", "trainer.scale_rewards=group"], "set scale_rewards to batch or none"),
        (["trainer.algorithm=reinforce_pp", "trainer.num_generations=1"], "set num_generations to 2 or more"),
        (["trainer.algorithm=rloo", "schedule.pipeline=one_step"], "trains on-policy only"),
        (["trainer.algorithm=ppo", "schedule.pipeline=one_step"], "trains on-policy only"),
        (["trainer.algorithm=ppo", "trainer.importance_sampling_level=sequence"], "remove it"),
        (["trainer.algorithm=ppo", "trainer.scale_rewards=batch"], "whitened over the batch"),
        (["trainer.algorithm=ppo", "scoring.mode=listwise"], "listwise ranks a prompt's group"),
        (["trainer.algorithm=ppo", "trainer.mask_truncated_completions=true"], "not used by ppo"),
        (["trainer.algorithm=ppo", "policy.rollout.backend=vllm"], "policy.rollout.backend: transformers"),
        (["trainer.algorithm=mystery"], "trainer.algorithm"),
    ],
)
def test_combinations_trl_cannot_train_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


# RLOO (arXiv 2402.14740) and REINFORCE++-baseline (arXiv 2501.03262), as RLOOConfig fields:
# (beta, epsilon, epsilon_high, normalize_advantages, mask_truncated_completions).
# epsilon_high None: RLOOTrainer uses epsilon.
RLOO_EXPECTED = {"rloo": (0.05, 0.2, None, False, False), "reinforce_pp": (0.05, 0.2, None, True, False)}


@pytest.mark.parametrize("algorithm", sorted(RLOO_EXPECTED))
def test_rloo_algorithms_set_trl_rloo_fields(algorithm, tmp_path):
    config = load_config(None, [f"trainer.algorithm={algorithm}"])
    args = rloo_config(config.trainer, GenerationConfig(), "cpu", torch.float32, tmp_path)
    fields = (args.beta, args.epsilon, args.epsilon_high, args.normalize_advantages)
    assert (*fields, args.mask_truncated_completions) == pytest.approx(RLOO_EXPECTED[algorithm])
    assert (args.num_generations, args.steps_per_generation, args.num_iterations) == (4, 1, 1)


def test_ppo_takes_the_official_trainers_defaults():
    config = load_config(None, ["trainer.algorithm=ppo"])
    trainer, ppo = config.trainer, config.trainer.ppo
    # SPEC 1.3 and 3.3: one sample per prompt, k1 KL 0.05, clip 0.2, 4 epochs, 1 minibatch, vf_coef 0.1,
    # value clip 0.2, gamma 1, lambda 0.95, no reward whitening.
    assert (trainer.num_generations, trainer.beta, trainer.epsilon) == (1, 0.05, 0.2)
    assert (ppo.epochs, ppo.minibatches, ppo.vf_coef, ppo.cliprange_value) == (4, 1, 0.1, 0.2)
    assert (ppo.gamma, ppo.lam, ppo.whiten_rewards, ppo.value_model, ppo.value_lora) == (
        1.0,
        0.95,
        False,
        None,
        False,
    )
    # A rubric rewrite may change the score range; PPO's value model sees rewards mapped to 0..1 by default.
    assert config.scoring.reward == "normalized"
    assert load_config(None, ["trainer.algorithm=ppo", "scoring.reward=raw"]).scoring.reward == "raw"
    assert load_config(None, ["trainer.algorithm=grpo"]).scoring.reward == "raw"


def test_the_reference_shows_the_presets_table():
    reference = config_reference()
    assert (
        "| `gspo` | TRL GRPOTrainer | grpo | 0.0 | 0.0003 | 0.0004 | group | sequence | false | - |"
        in reference
    )
    assert "| `reinforce_pp` | TRL RLOOTrainer | - | 0.05 | 0.2 | null | batch | - | - | - |" in reference
    assert "| `ppo` | ours | - | 0.05 | 0.2 | null | - | - | - | 1 |" in reference
    assert "DAPO (arXiv 2503.14476" in reference


@pytest.mark.parametrize("algorithm", [*sorted(EXPECTED), *sorted(RLOO_EXPECTED), "ppo"])
def test_a_runs_saved_config_loads_again_as_it_was(algorithm):
    """`mpo resume` reads config.yaml, which lists every field: the checks on fields a config sets must not
    refuse a config's own defaults there."""
    config = load_config(None, [f"trainer.algorithm={algorithm}"])
    assert MPOConfig(**redacted_dump(config)) == config
