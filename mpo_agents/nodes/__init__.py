"""The five MPO nodes, one module each. A node reads the state, calls one interface, returns a partial update."""

from mpo_agents.nodes.meta_analyze import meta_analyze
from mpo_agents.nodes.policy_update import policy_update
from mpo_agents.nodes.rollout import rollout
from mpo_agents.nodes.rubric_rewrite import rubric_rewrite
from mpo_agents.nodes.score import score

__all__ = ["meta_analyze", "policy_update", "rollout", "rubric_rewrite", "score"]
