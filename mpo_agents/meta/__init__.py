"""Meta-reward model pieces shared by the meta stages: the rollout window and which samples are read."""

from mpo_agents.meta.cases import sample_cases, stratified_cluster_cases
from mpo_agents.meta.window import judged_samples, window_samples

__all__ = ["judged_samples", "sample_cases", "stratified_cluster_cases", "window_samples"]
