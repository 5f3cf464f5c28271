"""Config layering and the errors a user sees for a bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpo_agents.config import load_config
from mpo_agents.errors import ConfigError
from mpo_agents.judges.build import resolve_endpoint
from tests.support import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_then_environment_then_cli_override(tmp_path, monkeypatch):
    path = write(tmp_path, "trainer:\n  beta: 0.1\n  learning_rate: 0.5\nschedule:\n  iterations: 3\n")
    monkeypatch.setenv("MPO_TRAINER__BETA", "0.2")
    monkeypatch.setenv("MPO_SCHEDULE__ITERATIONS", "9")
    config = load_config(path, ["schedule.iterations=11"])
    assert config.trainer.learning_rate == 0.5  # file only
    assert config.trainer.beta == 0.2  # environment beats file
    assert config.schedule.iterations == 11  # --set beats environment


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MPO_TRAINER__SEED=7\n")
    assert load_config(None).trainer.seed == 7


def test_unknown_key_names_the_path_and_the_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "trainer:\n  lr: 0.1\n"))
    message = str(err.value)
    assert "trainer.lr: unknown key" in message
    assert "learning_rate" in message


def test_wrong_type_names_the_field_and_the_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["judge.timeout=soon"])
    assert "judge.timeout" in str(err.value) and "'soon'" in str(err.value)


def test_literal_field_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["policy.device=tpu"])
    assert "policy.device" in str(err.value) and "'cuda'" in str(err.value)


def test_api_key_in_config_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "judge:\n  api_key: sk-secret\n"))
    assert "api_key_env" in str(err.value)
    assert "sk-secret" not in str(err.value)


def test_model_without_provider_prefix_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["judge.model=gpt-4o-mini"])
    assert "openai/gpt-4o-mini" in str(err.value)


def test_local_server_role_requires_the_server():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["judge.use_local_server=true"])
    assert "local_server.enabled" in str(err.value)


def test_bad_set_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["trainer.beta"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_missing_api_key_variable_is_reported_before_the_run():
    config = load_config(None, ["judge.api_key_env=MY_JUDGE_KEY"])
    with pytest.raises(ConfigError, match=r"\$MY_JUDGE_KEY"):
        resolve_endpoint("judge", config.judge, {}, None)
    assert resolve_endpoint("judge", config.judge, {"MY_JUDGE_KEY": "sk-123"}, None).api_key == "sk-123"


def test_hosted_model_without_provider_key_is_reported():
    config = load_config(None, ["judge.model=openai/gpt-4o-mini"])
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        resolve_endpoint("judge", config.judge, {}, None)


EXAMPLES = REPO / "examples"


@pytest.mark.parametrize(
    "example",
    sorted(p for p in EXAMPLES.rglob("*.yaml") if "accelerate" not in p.parts),
    ids=lambda p: str(p.relative_to(EXAMPLES)),
)
def test_shipped_example_configs_are_valid(example):
    from mpo_agents.tasks import available_tasks

    config = load_config(example)
    assert config.task.name in available_tasks()
    if example.parent.name == "baselines":
        # A fixed-rubric baseline: the meta stage is off and the rubric file exists and parses.
        from mpo_agents.tasks import build_task

        assert config.schedule.meta_every == 0
        task = build_task(
            config.task.model_copy(update={"initial_rubric": EXAMPLES.parent / config.task.initial_rubric})
        )
        assert task.initial_rubric().version == 0


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in (REPO / "examples").rglob("*.yaml")
        if "meta_node_plugin" not in p.parts and "accelerate" not in p.parts
    ),
    ids=lambda p: p.name,
)
def test_every_shipped_example_config_is_valid(path):
    """Examples nobody runs in CI (hosted judges, vLLM servers) must still match the config schema."""
    config = load_config(path, [])
    assert config.task.name


@pytest.mark.parametrize("path", sorted((EXAMPLES / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load_in_accelerate(path):
    """The launch configs are accelerate's, checked by accelerate's own loader."""
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes > 1 and config.distributed_type.value in {"MULTI_GPU", "DEEPSPEED"}
    if config.distributed_type.value == "DEEPSPEED":  # parameter sharding (stage 3) is refused at start
        assert config.deepspeed_config["zero_stage"] in (1, 2)
