"""Where mpo-agents keeps what it computes once per machine and reuses across runs (converted models, prompt
clusters): `$MPO_CACHE_DIR`, else `~/.cache/mpo-agents`."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MPO_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where converted models and cached prompt clusters live: `$MPO_CACHE_DIR`, else `~/.cache/mpo-agents`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mpo-agents"
