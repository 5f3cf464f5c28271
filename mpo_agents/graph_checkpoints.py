"""Where the graph's checkpoints live: SQLite in the run directory (the default), or PostgreSQL shared between
machines (`output.checkpointer: postgres`). Both are LangGraph's own savers with the same interface.

A SQLite database belongs to one run, so its thread is always `mpo`. A Postgres database may hold many runs,
so each run's thread is named by the run id written into its directory when the run was created.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from mpo_agents.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from mpo_agents.config import MPOConfig
    from mpo_agents.rundir import RunDirectory

THREAD_ID = "mpo"
RUN_ID_FILE = "run_id"
POSTGRES_HINT = "pip install 'mpo-agents[postgres]' (langgraph-checkpoint-postgres and psycopg)"
_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*@|(password=)\S+")


def run_id(run_dir: RunDirectory) -> str:
    """This run's id: made once, kept in the run directory (the Postgres thread of the run)."""
    from mpo_agents.rundir import atomic_write_text

    path = run_dir.root / RUN_ID_FILE
    if not path.is_file():
        atomic_write_text(path, uuid.uuid4().hex + "\n")
    return path.read_text(encoding="utf-8").strip()


def has_graph_checkpoints(config: MPOConfig, run_dir: RunDirectory) -> bool:
    """Whether the run ever opened its checkpointer (the SQLite file, or the run id a Postgres thread is named
    by), i.e. whether `mpo resume` has anything to continue."""
    if config.output.checkpointer == "sqlite":
        return run_dir.checkpoint_db.exists()
    return (run_dir.root / RUN_ID_FILE).is_file()


def thread_id(config: MPOConfig, run_dir: RunDirectory) -> str:
    return THREAD_ID if config.output.checkpointer == "sqlite" else f"{THREAD_ID}-{run_id(run_dir)}"


def redact(url: str) -> str:
    """A connection string without its password, for messages."""
    return _PASSWORD.sub(lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", url)


def postgres_url(config: MPOConfig, environ: Mapping[str, str]) -> str:
    """The connection string, from the environment variable the config names (never from the file: it may
    hold a password)."""
    name = config.output.postgres_url_env
    url = environ.get(name, "").strip()
    if not url:
        raise ConfigError(
            f"output.checkpointer is 'postgres' but ${name} is not set; export it "
            f"(e.g. postgresql://user:password@host:5432/mpo) or add it to .env (output.postgres_url_env names it)"
        )
    return url


def check_checkpointer(config: MPOConfig, environ: Mapping[str, str]) -> None:
    """Fail before any model loads when the configured checkpointer cannot be used (no URL, no driver)."""
    if config.output.checkpointer == "sqlite":
        return
    postgres_url(config, environ)
    import importlib.util

    if (
        importlib.util.find_spec("langgraph.checkpoint.postgres") is None
        or importlib.util.find_spec("psycopg") is None
    ):
        raise ConfigError(f"output.checkpointer 'postgres' needs {POSTGRES_HINT}")


@asynccontextmanager
async def open_checkpointer(
    config: MPOConfig, run_dir: RunDirectory, environ: Mapping[str, str]
) -> AsyncIterator[tuple[Any, str]]:
    """(saver, thread id) for this run, open while the block runs."""
    if config.output.checkpointer == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(str(run_dir.checkpoint_db)) as saver:
            yield saver, THREAD_ID
        return
    url = postgres_url(config, environ)
    try:
        import psycopg
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    except ImportError as exc:
        raise ConfigError(f"output.checkpointer 'postgres' needs {POSTGRES_HINT}") from exc
    try:
        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()  # creates or migrates LangGraph's tables; safe on every start
            yield saver, thread_id(config, run_dir)
    except psycopg.OperationalError as exc:
        raise CheckpointError(
            f"cannot use the Postgres checkpointer at {redact(url)} (${config.output.postgres_url_env}): "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc


async def refuse_unknown_nodes(app: Any, run_config: dict[str, Any]) -> None:
    """Raise if the saved graph state waits on a node the compiled graph `app` does not have: LangGraph would
    skip it and report the run finished. It happens to runs started before the meta step was split into
    `meta_analyze` and `rubric_rewrite` (they wait on `meta` or `rubric_commit`), and to runs resumed with a
    config that dropped a meta-level node they were in."""
    saved = await app.checkpointer.aget_tuple(run_config)
    if saved is None:
        return
    checkpoint = saved.checkpoint
    missing = []
    for channel in checkpoint["channel_values"]:
        node = channel.removeprefix("branch:to:")
        if node == channel or node in app.nodes:
            continue
        seen = checkpoint["versions_seen"].get(node, {}).get(channel)
        if seen is None or checkpoint["channel_versions"].get(channel, seen) > seen:
            missing.append(node)
    if missing:
        raise CheckpointError(
            f"the saved graph state waits on {', '.join(sorted(missing))}, which this graph does not have "
            f"(its nodes: {', '.join(n for n in app.nodes if not n.startswith('__'))}). Runs started before "
            "the meta step became meta_analyze and rubric_rewrite cannot resume: finish them with the "
            "mpo-agents version that started them, or start a new run; if the config's meta_nodes changed, "
            "put the named node back"
        )
