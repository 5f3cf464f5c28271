"""Graph nodes: each a small function of (state, runtime) that returns a partial state update."""

from mpo_agents.nodes.meta_stages import meta_analyze, meta_merge, meta_prescreen, meta_refine
from mpo_agents.nodes.policy_update import policy_update
from mpo_agents.nodes.rollout import rollout
from mpo_agents.nodes.score import score

__all__ = ["meta_analyze", "meta_merge", "meta_prescreen", "meta_refine", "policy_update", "rollout", "score"]
