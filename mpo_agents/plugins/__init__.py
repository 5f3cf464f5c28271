"""Meta-level ("meta-meta") nodes: plug-ins that watch the meta-judge and the rubric it writes.

A meta-level node is any object with a `name`, a `stage` and an async `__call__(view) -> Decision | None`:

- stage `after_score` runs every iteration once the batch is scored (e.g. an alarm on reward hacking, which
  may start a meta step early);
- stage `after_rewrite` runs when the meta-judge proposed a new rubric, before it is used (e.g. a gate that
  re-scores anchors under both rubrics); its verdict decides whether the proposal is accepted, rejected
  (the parent rubric stays in force) or edited. With `rubric.scope: prompt` there is no task rubric to
  rewrite: an after_rewrite node that also has `check_buffer(BufferView)` (a `BufferGate`, e.g. `rubric_gate`)
  decides on each change to a prompt's buffer instead; one without it is refused.

Nodes are found through the `mpo_agents.meta_nodes` entry point group, so a node is a separate installable
package: its entry point names a factory called with the node's `settings` from the config. See
docs/extending.md and examples/meta_node_plugin/.
"""

from __future__ import annotations

from mpo_agents.plugins.api import SCHEDULE_KNOBS, BufferGate, BufferView, Decision, MetaNode, MetaView, Stage
from mpo_agents.plugins.registry import (
    ENTRY_POINT_GROUP,
    MetaNodeError,
    available_meta_nodes,
    load_meta_nodes,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "SCHEDULE_KNOBS",
    "BufferGate",
    "BufferView",
    "Decision",
    "MetaNode",
    "MetaNodeError",
    "MetaView",
    "Stage",
    "available_meta_nodes",
    "load_meta_nodes",
]
