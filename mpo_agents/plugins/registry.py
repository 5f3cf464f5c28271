"""Finding meta-level nodes by name in the `mpo_agents.meta_nodes` entry point group and building them from
their settings. Our own nodes are registered the same way (pyproject.toml), so a user's node is no different."""

from __future__ import annotations

from importlib.metadata import entry_points

from mpo_agents.config import MetaNodeConfig
from mpo_agents.errors import ConfigError
from mpo_agents.plugins.api import MetaNode

ENTRY_POINT_GROUP = "mpo_agents.meta_nodes"
# Names the loop's own nodes and their stages use (graphs/mpo.py); a meta-level node may not take one.
RESERVED = frozenset(
    {
        "rollout",
        "score",
        "judge_dispatch",
        "judge_collect",
        "meta_due",
        "meta_analyze",
        "prescreen",
        "analyze",
        "rubric_rewrite",
        "refine",
        "merge",
        "commit",
        "policy_update",
    }
)


class MetaNodeError(ConfigError):
    """A meta-level node could not be found or built; the message names it and the fix."""


def available_meta_nodes() -> dict[str, str]:
    """Registered node names -> where they come from (`module:attribute`)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_meta_nodes(configs: list[MetaNodeConfig]) -> list[MetaNode]:
    """The configured nodes, in order, each built by its entry point's factory from its settings."""
    registered = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    nodes: list[MetaNode] = []
    for config in configs:
        if config.name in RESERVED:
            raise MetaNodeError(f"meta_nodes: '{config.name}' is the name of one of the loop's own nodes")
        entry = registered.get(config.name)
        if entry is None:
            known = ", ".join(sorted(registered)) or "none"
            raise MetaNodeError(
                f"meta_nodes: no node named '{config.name}' is installed (registered: {known}); install the "
                f'package that provides it, or check its `[project.entry-points."{ENTRY_POINT_GROUP}"]`'
            )
        try:
            factory = entry.load()
            node = factory(**config.settings)
        except (TypeError, ValueError) as exc:
            raise MetaNodeError(f"meta_nodes: '{config.name}' refused its settings: {exc}") from exc
        except ImportError as exc:
            raise MetaNodeError(
                f"meta_nodes: '{config.name}' ({entry.value}) cannot be imported: {exc}"
            ) from exc
        if getattr(node, "stage", None) not in ("after_score", "after_rewrite") or not callable(node):
            raise MetaNodeError(
                f"meta_nodes: '{config.name}' ({entry.value}) built {node!r}, which is not a meta-level node: it "
                "needs `stage` ('after_score' or 'after_rewrite') and an async `__call__(view)`"
            )
        node.name = config.name  # the configured name is the node's name in the graph and the logs
        nodes.append(node)
    return nodes
