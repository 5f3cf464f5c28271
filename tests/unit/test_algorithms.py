"""`trainer.algorithm`: each GRPO-family name resolves to the TRL `GRPOConfig` fields its paper sets, every one
of them still overridable, and the combinations TRL cannot train are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpo_agents.config import GenerationConfig, config_reference, load_config
from mpo_agents.errors import ConfigError
from mpo_agents.policy.grpo import grpo_config

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
        (["trainer.algorithm=ppo"], "trainer.algorithm"),
    ],
)
def test_combinations_trl_cannot_train_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_the_reference_shows_the_presets_table():
    reference = config_reference()
    assert "| `gspo` | grpo | 0.0 | 0.0003 | 0.0004 | group | sequence | false |" in reference
    assert "DAPO (arXiv 2503.14476" in reference
