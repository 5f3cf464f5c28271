"""The config a run directory holds: read back exactly as the run was started with it, or changed and written
back (a resume that raises the budget must be remembered by the next resume)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mpo_agents.config import MPOConfig, format_validation_error, redacted_dump
from mpo_agents.errors import CheckpointError, ConfigError
from mpo_agents.rundir import CONFIG_FILE, atomic_write_text


def write_config(path: Path, config: MPOConfig) -> None:
    """The config as a run directory keeps it: secrets redacted, fields in the model's order."""
    atomic_write_text(path, yaml.safe_dump(redacted_dump(config), sort_keys=False))


def saved_config(run_dir: Path) -> MPOConfig:
    """The config a run was started with, exactly (the environment does not re-apply on resume)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return MPOConfig(**(data if isinstance(data, dict) else {"": data}))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        why = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path} is damaged or was edited into an invalid config ({why}); restore it from a copy (it is "
            "the config the run was started with)"
        ) from exc


def update_saved_config(run_dir: Path, config: MPOConfig, **sections: dict[str, Any]) -> MPOConfig:
    """The run's config with some fields changed, validated and written back (a resume that changes the
    budget must be remembered by the next resume)."""
    data = config.model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    try:
        updated = MPOConfig(**data)
    except ValueError as exc:
        raise ConfigError(f"invalid change to the run's config: {exc}") from exc
    write_config(Path(run_dir) / CONFIG_FILE, updated)
    return updated
