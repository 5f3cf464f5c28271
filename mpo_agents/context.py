"""The resources a run holds (policy, judge clients, task, run directory), built once and handed to every node
through LangGraph's runtime context. None of this is ever written into the graph state."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mpo_agents.buffers import check_data_items
from mpo_agents.config import MPOConfig
from mpo_agents.judges.build import build_judges
from mpo_agents.prompts import PromptTemplate, load_prompt
from mpo_agents.rubrics import RubricStore
from mpo_agents.rundir import RunDirectory
from mpo_agents.tasks import Task, build_task
from mpo_agents.tasks.data import PromptBudget

if TYPE_CHECKING:
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.judges.ensemble import JudgePanel
    from mpo_agents.judges.local_server import LocalServer
    from mpo_agents.policy.base import PolicyBackend
    from mpo_agents.policy.grpo import TRLGRPOPolicy


@dataclass
class RunContext:
    config: MPOConfig
    run_dir: RunDirectory
    task: Task
    policy: PolicyBackend
    judge: JudgePanel  # one client, or an ensemble's members
    meta_judge: JudgeClient
    rubrics: RubricStore
    server: LocalServer | None = None  # the local judge server, when the config starts one
    # The last iteration whose update the policy in memory holds (0: none, the base model): set when a run
    # restores its checkpoint and replays, advanced by each update.
    policy_iteration: int = 0
    # The pipelined loop's judging in flight, by the iteration of its batch: tasks on the run's event loop that
    # `judge_dispatch` starts and `judge_collect` awaits. Never in the graph state: a stopped run has none.
    judging: dict[int, asyncio.Future] = field(default_factory=dict)

    def start_judging(self, iteration: int, judging: Coroutine[Any, Any, Any]) -> None:
        self.judging[iteration] = asyncio.ensure_future(judging)

    def take_judging(self, iteration: int) -> asyncio.Future | None:
        """The judging of `iteration`'s batch this process started, if any (one started before a resume is
        gone)."""
        return self.judging.pop(iteration, None)

    async def cancel_judging(self) -> None:
        """Stop judging that nobody will collect (the run stops); what it finished is in the judgment cache."""
        for future in self.judging.values():
            future.cancel()
        await asyncio.gather(*self.judging.values(), return_exceptions=True)
        self.judging.clear()

    def check_server(self) -> None:
        """Raise ServerError if the local judge server has stopped serving for good (its restarts used up)."""
        if self.server is not None:
            self.server.check()

    def prompt(self, role: str, api: str = "chat") -> PromptTemplate:
        return load_prompt(self.task.name, role, api, self.task.prompts_dir)


def build_run_policy(config: MPOConfig, run_dir: RunDirectory) -> TRLGRPOPolicy:
    """The run's policy (every process of a multi-process run builds one the same way): torch threads, then the
    model and its TRL trainer. A resumed run's newest checkpoint decides LoRA under `policy.lora.enabled: auto`."""
    from mpo_agents.policy import build_policy, latest_checkpoint

    if config.policy.cpu_threads:
        import torch

        torch.set_num_threads(config.policy.cpu_threads)
    return build_policy(
        config.policy,
        config.trainer,
        run_dir.root / "trainer",
        run_dir.tensorboard_dir,
        resume_from=latest_checkpoint(run_dir.policy_dir),
    )


def build_run_task(config: MPOConfig) -> Task:
    """The run's task, its data read and checked and its prompts measured as the policy will see them (only the
    policy's tokenizer loads, not its model), so that bad data fails before anything heavy starts."""
    from mpo_agents.policy.tokens import PromptMeter

    budget = PromptBudget(config.trainer.max_prompt_length, PromptMeter(config.policy.model))
    task = build_task(config.task, prompt_budget=budget)
    if config.rubric.scope == "prompt" and config.rubric.items_field:
        check_data_items(task.records, config.rubric.items_field, task.prompt_text)
    return task


def build_context(
    config: MPOConfig,
    run_dir: RunDirectory,
    environ: Mapping[str, str],
    task: Task,
    server: LocalServer | None = None,
) -> RunContext:
    """The judges and the policy (the slow part: model weights and the TRL trainer) around the task that
    `build_run_task` built and checked."""
    judge, meta_judge = build_judges(config, run_dir, environ, server)
    policy = build_run_policy(config, run_dir)
    return RunContext(
        config=config,
        run_dir=run_dir,
        task=task,
        policy=policy,
        judge=judge,
        meta_judge=meta_judge,
        rubrics=RubricStore(run_dir.rubrics_dir),
        server=server,
    )
