"""Start or resume a run: the local server, the context, the checkpointed graph, typed events out, clean
stops."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents import parallel
from mpo_agents.config import MPOConfig
from mpo_agents.errors import CheckpointError, ConfigError, StorageError
from mpo_agents.events import BudgetExhausted, NodeFinished, ReviewRequested, RunEvent, StopRequested
from mpo_agents.rubrics import RubricStore
from mpo_agents.run_config import saved_config, write_config
from mpo_agents.rundir import CHECKPOINT_DB, RunDirectory, append_jsonl, storage_error

if TYPE_CHECKING:
    from mpo_agents.integrity import RunCheck
    from mpo_agents.parallel import ControlChannel
    from mpo_agents.tasks import Task

log = logging.getLogger(__name__)
GRAPH_RECURSION_LIMIT = 1_000_000  # a run is a long loop; LangGraph's default of 25 steps is for agents


@dataclass
class RunOutcome:
    run_dir: Path
    status: str  # "finished" | "stopped" | "over_budget" | "awaiting_review"
    iteration: int  # the next iteration to run
    rubric_version: int
    policy_step: int
    last_metrics: dict[str, Any] = field(default_factory=dict)


ProgressHook = Callable[[RunEvent], None]


def new_run_dir(config: MPOConfig, run_dir: Path | None) -> RunDirectory:
    root = (
        run_dir
        or config.output.run_dir
        or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{config.task.name}"
    )
    root = Path(root)
    if (root / CHECKPOINT_DB).exists():
        raise ConfigError(
            f"{root} already holds a run; continue it with `mpo resume {root}` or pick another --run-dir"
        )
    directory = RunDirectory(root)
    config = config.model_copy(update={"output": config.output.model_copy(update={"run_dir": root})})
    write_config(directory.config_path, config)
    return directory


def initial_state(config: MPOConfig, task: Task, store: RubricStore) -> dict[str, Any]:
    first = task.initial_rubric()
    store.save(first)
    return {"iteration": 1, "rubric": first.to_state(), "window": [], "policy_step": 0, "metrics": {}}


def execute(
    config: MPOConfig,
    run_dir: RunDirectory,
    environ: Mapping[str, str],
    *,
    fresh: bool,
    on_event: ProgressHook | None = None,
    on_status: Callable[[str], None] | None = None,
    review: dict[str, Any] | None = None,
    check: RunCheck | None = None,
    channel: ControlChannel | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Run the graph until the schedule ends, a stop is requested (SIGINT: finish the node, then stop) or a
    rubric change waits for review; a local judge server that stopped serving for good raises ServerError.
    `on_event` gets each `mpo_agents.events.RunEvent` as it happens (a node finished, the budget spent, ...).
    `review` resumes a run paused for review with that decision
    ({"decision": "accept" | "reject" | "edit", "text": ..., "note": ..., "reviewer": ...}). A resumed run
    passes the `check` of its directory (`mpo_agents.integrity`): the policy checkpoint it names is restored,
    damaged ones are moved aside and updates they held are applied again. `on_status` gets what the run is
    doing now; `on_warning` what the user should read before it goes on (also in run.log). In a launch of
    several processes, process 0 passes its `channel` (`mpo_agents.parallel.join`); the others follow.

    A write into the run directory that the operating system refuses raises StorageError, whatever wrote it."""
    try:
        return _execute(
            config, run_dir, environ, fresh, on_event, on_status, review, check, channel, on_warning
        )
    except Exception as exc:
        error = _storage_error(exc, run_dir)
        if error is None:
            raise
        raise error from exc


def _storage_error(exc: BaseException, run_dir: RunDirectory) -> StorageError | None:
    """The StorageError behind a failure that no write site named: an OS error carries its file; SQLite's
    come from the graph's checkpoint database (the judgment cache names its own file)."""
    import sqlite3

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError):
        where = Path(exc.filename) if exc.filename else run_dir.root
        if where.is_absolute() and not where.is_relative_to(run_dir.root.resolve()):
            return None  # e.g. unreadable task data: not the run directory's storage
        return storage_error(exc, where)
    if isinstance(exc, sqlite3.OperationalError):
        return storage_error(exc, run_dir.checkpoint_db)
    return storage_error(exc, run_dir.policy_dir)  # safetensors, the only other writer that reports in words


def _execute(
    config: MPOConfig,
    run_dir: RunDirectory,
    environ: Mapping[str, str],
    fresh: bool,
    on_event: ProgressHook | None,
    on_status: Callable[[str], None] | None,
    review: dict[str, Any] | None,
    check: RunCheck | None,
    channel: ControlChannel | None,
    on_warning: Callable[[str], None] | None,
) -> RunOutcome:
    from langgraph.types import Command
    from transformers.utils import logging as hf_logging

    from mpo_agents.context import build_context
    from mpo_agents.graph_checkpoints import check_checkpointer
    from mpo_agents.judges.local_server import local_server
    from mpo_agents.nodes.policy_update import save_policy_if_behind
    from mpo_agents.plugins import load_meta_nodes
    from mpo_agents.policy import latest_checkpoint, resolve_model_dir

    # Loading bars of every model load and save would scroll the progress bar away; the run log has the facts.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    status = on_status or (lambda message: None)
    try:
        # A missing plug-in fails now, before minutes of loading.
        meta_nodes = load_meta_nodes(config.meta_nodes)
        check_checkpointer(config, environ)  # so does a Postgres checkpointer without its URL or its driver
        if channel is not None:
            parallel.check_world(config, channel, environ)
        task = checked_task(config, status, on_warning or (lambda message: None))  # so does bad task data
        if check is None and not fresh:
            check = checked_run(run_dir, environ)  # and damage a person must mend
    except BaseException:
        if channel is not None:
            parallel.abandon(channel)
        raise
    if channel is not None:
        parallel.announce(channel, config, run_dir.root)
    if check is not None:
        _set_aside_damage(check, run_dir)
    with ExitStack() as stack:
        server = None
        if config.local_server.enabled:
            status("preparing the local judge model")
            model_dir = resolve_model_dir(config.local_server.model)
            status(f"starting the local judge server ({model_dir.name})")
            server = stack.enter_context(
                local_server(model_dir, config.local_server, run_dir.root / "server.log")
            )
        status("loading the policy and building the TRL trainer")
        ctx = build_context(config, run_dir, environ, task, server)
        if channel is not None:
            status(f"policy replicas ready in {channel.world_size} processes")
            ctx.policy = parallel.ShardedPolicy(ctx.policy, channel)
        stack.push(_policy_closer(ctx.policy))  # complete the dashboards' files however the run ends
        if check is not None:
            _restore_policy(ctx, check, status)
        elif latest_checkpoint(run_dir.policy_dir) is not None:
            raise CheckpointError(f"{run_dir.policy_dir} already holds policy checkpoints")
        inputs: Any = initial_state(config, ctx.task, ctx.rubrics) if fresh else None
        if review is not None:
            inputs = Command(resume=review)
        hook = on_event or (lambda event: None)
        outcome = asyncio.run(_drive(ctx, inputs, hook, meta_nodes, environ))
        if save_policy_if_behind(ctx):  # a stop between two checkpoints of the cadence
            status(f"saved the policy of iteration {ctx.policy_iteration}")
        return outcome


def _set_aside_damage(check: RunCheck, run_dir: RunDirectory) -> None:
    """Move what the check found damaged out of the way, before anything could read it: policy checkpoints
    (as `iter-N.damaged`), and a judgment cache SQLite cannot read (its judgments are asked again)."""
    from mpo_agents.judges.cache import CACHE_FILE
    from mpo_agents.policy import quarantine

    for path in check.damaged:
        log.warning("policy checkpoint %s is damaged; moved aside as %s", path, quarantine(path).name)
    if check.damaged_cache:
        cache = run_dir.root / CACHE_FILE
        for suffix in ("", "-wal", "-shm"):
            part = cache.with_name(cache.name + suffix)
            if part.exists():
                part.rename(part.with_name(part.name + ".damaged"))
        log.warning("the judgment cache %s is damaged; moved aside, its judgments are asked again", cache)


def _restore_policy(ctx: Any, check: RunCheck, status: Callable[[str], None]) -> None:
    """Load the checkpoint the check verified (not verified twice), then apply again the updates that the
    graph made after it, from their stored rollouts and rewards."""
    from mpo_agents.nodes.policy_update import replay_updates
    from mpo_agents.policy import checkpoint_index

    if check.checkpoint is not None:
        status(f"restoring policy weights and optimizer from {check.checkpoint.name}")
        ctx.policy.load(check.checkpoint, verify=False)
        ctx.policy_iteration = checkpoint_index(check.checkpoint)
    if check.replay:
        log.warning(
            "applying the updates of iterations %d-%d again: the restored checkpoint (%s) predates them",
            check.replay.start,
            check.replay.stop - 1,
            check.checkpoint.name if check.checkpoint else "the base model",
        )
        replay_updates(ctx, check.replay, status)


def checked_run(run_dir: RunDirectory, environ: Mapping[str, str]) -> RunCheck:
    """What a resume verifies before any model loads (see `mpo_agents.integrity`); CheckpointError, naming each
    problem and its fix, when a person has to act first."""
    from mpo_agents.integrity import check_run

    check = check_run(run_dir.root, environ, thorough=False)
    check.refuse_if_blocked()
    return check


def checked_task(config: MPOConfig, status: Callable[[str], None], warn: Callable[[str], None]) -> Task:
    """The run's task, built before the judge server or the policy loads: every line of its data checked and
    its prompts measured with the policy's tokenizer, the outcome reported (run.log, status, a warning when
    prompts are too long). Built once and handed on to the run's context."""
    from mpo_agents.context import build_run_task

    status("reading and checking the task data")
    task = build_run_task(config)
    lengths = task.prompt_lengths
    if lengths is not None:
        message = f"task data {task.data_path}: {lengths.summary()}"
        if lengths.too_long:
            log.warning(message)
            warn(message)
        else:
            log.info(message)
        status(message)
    return task


def _policy_closer(policy: Any) -> Callable[..., bool]:
    """An ExitStack exit callback: close the policy; after a failure, a multi-process policy is abandoned
    instead (its followers may be stuck inside the failed command and cannot take a `stop`)."""

    def close(kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> bool:
        if kind is not None and isinstance(policy, parallel.ShardedPolicy):
            policy.abandon()
        else:
            policy.close()
        return False  # never swallow the error

    return close


async def _drive(
    ctx: Any, inputs: Any, on_event: ProgressHook, meta_nodes: list[Any], environ: Mapping[str, str]
) -> RunOutcome:
    from mpo_agents.graph_checkpoints import open_checkpointer, refuse_unknown_nodes
    from mpo_agents.graphs.mpo import META_STEPS, build_graph
    from mpo_agents.litellm_import import release_litellm

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        stop.set()
        on_event(StopRequested())
        # A second Ctrl-C interrupts at once; checkpoints stay consistent because every write is atomic.
        loop.remove_signal_handler(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, request_stop)
    try:
        async with open_checkpointer(ctx.config, ctx.run_dir, environ) as (saver, thread):
            run_config = {"configurable": {"thread_id": thread}, "recursion_limit": GRAPH_RECURSION_LIMIT}
            app = build_graph(meta_nodes, ctx.config.schedule.pipeline, ctx.config.rubric.scope).compile(
                checkpointer=saver
            )
            await refuse_unknown_nodes(app, run_config)
            current = (await app.aget_state(run_config)).values.get("iteration", 1)
            timings = NodeTimings(ctx.run_dir.timings_path, current)
            # No "already finished?" shortcut here: a run killed after a node wrote its results but before the step
            # was committed has an empty `next` too (LangGraph lists only tasks without writes), yet must go on.
            # Streaming a finished graph simply yields nothing.
            # subgraphs=True streams the meta stages one by one (for timings, progress and Ctrl-C between
            # stages); a meta step's own update (meta_analyze, rubric_rewrite) then closes its subgraph and is
            # not timed twice.
            budget = Budget(ctx)
            ctx.check_server()  # the local judge server may have failed while the policy loaded
            if budget.exhausted():
                on_event(budget.report())
                snapshot = await app.aget_state(run_config)
                return _outcome(ctx, snapshot.values, "over_budget")
            async for namespace, chunk in app.astream(
                inputs, run_config, context=ctx, stream_mode="updates", durability="sync", subgraphs=True
            ):
                for node, update in chunk.items():
                    if node == "__interrupt__":  # a review pause: reported once the stream ends
                        continue
                    if not (node in META_STEPS and not namespace):
                        timings.record(node, update or {})
                    on_event(NodeFinished(node, update or {}))
                # A local judge server that failed for good stops the run here, before a node would fail
                # every judgment (a node that calls it raises the same error itself).
                ctx.check_server()
                if budget.exhausted():
                    on_event(budget.report())
                    break
                if stop.is_set():
                    break
            snapshot = await app.aget_state(run_config)
            status = "stopped" if snapshot.next or snapshot.tasks else "finished"
            if status == "stopped" and budget.exhausted():
                status = "over_budget"
            if snapshot.interrupts:
                status = "awaiting_review"
                on_event(ReviewRequested(tuple(i.value for i in snapshot.interrupts)))
            return _outcome(ctx, snapshot.values, status)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await (
            ctx.cancel_judging()
        )  # a stopped pipelined run: a resume judges that batch again, from the cache
        for client in (ctx.judge, ctx.meta_judge):
            await client.aclose()
        await release_litellm()  # else LiteLLM's globals keep this run's context, policy included, alive


class Budget:
    """The run's judge spending against `schedule.budget_usd`: every attempt earlier processes logged (the call
    logs hold each attempt's price, so a run killed mid-iteration still counts what it spent) plus what this
    process's judges have spent since it started."""

    def __init__(self, ctx: Any) -> None:
        from mpo_agents.judges.records import CallLog

        self.ctx = ctx
        self.limit = ctx.config.schedule.budget_usd
        self.before = 0.0
        if self.limit is not None:
            for role in ("judge", "meta_judge"):
                path = ctx.run_dir.calls_path(role)
                if path.exists():
                    self.before += sum(record.get("cost_usd") or 0.0 for record in CallLog.read(path))

    def spent(self) -> float:
        live = self.ctx.judge.stats().cost_usd + self.ctx.meta_judge.stats().cost_usd
        return self.before + live

    def exhausted(self) -> bool:
        return self.limit is not None and self.spent() >= self.limit

    def report(self) -> BudgetExhausted:
        """What the run tells its caller when it stops for the budget."""
        return BudgetExhausted(spent_usd=self.spent(), budget_usd=self.limit or 0.0)


class NodeTimings:
    """Wall time of every node (from one streamed update to the next, checkpoint write included), appended to
    `timings.jsonl`: where an iteration's time goes."""

    def __init__(self, path: Path, iteration: int):
        self.path = path
        self.iteration = iteration
        self.last = time.perf_counter()

    def record(self, node: str, update: dict[str, Any]) -> None:
        now = time.perf_counter()
        record = {"iteration": self.iteration, "node": node, "seconds": round(now - self.last, 3)}
        append_jsonl(self.path, record)
        self.iteration = update.get("iteration", self.iteration)
        self.last = now


def pending_reviews(run_dir: Path) -> list[dict[str, Any]]:
    """What a run paused for review waits on (the diff, evidence, verdicts), read from its checkpoints; no
    model is loaded."""
    import os

    from mpo_agents.graph_checkpoints import open_checkpointer, refuse_unknown_nodes
    from mpo_agents.graphs.mpo import loop_graph

    run_dir = Path(run_dir)
    config = saved_config(run_dir)
    directory = RunDirectory(run_dir)
    if config.output.checkpointer == "sqlite" and not directory.checkpoint_db.exists():
        return []
    if config.output.checkpointer == "sqlite":
        from mpo_agents.integrity import sqlite_problem

        if problem := sqlite_problem(directory.checkpoint_db):
            raise CheckpointError(
                f"{directory.checkpoint_db} is damaged ({problem}); `mpo check {run_dir}` says how to recover"
            )

    async def read() -> list[dict[str, Any]]:
        async with open_checkpointer(config, directory, os.environ) as (saver, thread):
            graph = loop_graph(config)
            app = graph.compile(checkpointer=saver)
            await refuse_unknown_nodes(app, {"configurable": {"thread_id": thread}})
            snapshot = await app.aget_state({"configurable": {"thread_id": thread}})
            return [interrupt.value for interrupt in snapshot.interrupts]

    return asyncio.run(read())


def _outcome(ctx: Any, values: dict[str, Any], status: str) -> RunOutcome:
    return RunOutcome(
        run_dir=ctx.run_dir.root,
        status=status,
        iteration=values.get("iteration", 1),
        rubric_version=values.get("rubric", {}).get("version", 0),
        policy_step=values.get("policy_step", 0),
        last_metrics=values.get("metrics", {}),
    )
