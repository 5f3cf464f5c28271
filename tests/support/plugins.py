"""A module of plug-ins registered by entry points, as `pip install` leaves one behind, without the build."""

from __future__ import annotations

import textwrap
from pathlib import Path


def install_plugin_module(
    directory: Path, module: str, source: str, group: str, entries: dict[str, str]
) -> Path:
    """`module.py` with `source`, plus a dist-info registering `entries` (name -> `module:attribute`) in the
    entry-point `group`, both in `directory`: put that on sys.path and importlib.metadata finds them."""
    (directory / f"{module}.py").write_text(textwrap.dedent(source))
    info = directory / f"{module}-0.1.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{entry} = {target}" for entry, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")
    return directory
