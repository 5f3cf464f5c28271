"""Meta-reward model pieces shared by the meta nodes: which samples the meta-judge reads."""

from mpo_agents.meta.window import sample_window

__all__ = ["sample_window"]
