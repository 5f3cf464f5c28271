"""The meta-reward pipeline's helpers, shared by its stages (nodes/meta_analyze.py and rubric_rewrite.py)."""

from mpo_agents.meta.cases import sample_cases, stratified_cluster_cases
from mpo_agents.meta.window import judged_samples, window_samples

__all__ = ["judged_samples", "sample_cases", "stratified_cluster_cases", "window_samples"]
