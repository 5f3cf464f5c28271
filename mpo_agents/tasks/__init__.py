"""Tasks as plug-ins: data, policy prompt, judge inputs and deterministic reward guards per task."""

from mpo_agents.tasks.base import GuardResult, Task
from mpo_agents.tasks.registry import available_tasks, build_task

__all__ = ["GuardResult", "Task", "available_tasks", "build_task"]
