"""The local judge server is watched: restarted when it stops serving, a clear error when restarts run out,
and never outliving the run that started it. Real `transformers serve` on the tiny model (~5 s per start)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mpo_agents.config import JudgeConfig, LocalServerConfig
from mpo_agents.errors import ServerError
from mpo_agents.judges.build import judge_client
from mpo_agents.judges.client import JudgeClient, JudgeResult
from mpo_agents.judges.local_server import LocalServer, free_port, local_server, supervised_server
from tests.support import REPO, run_overrides
from tests.support.cli import run_command, start_mpo

# One worker runs this module under pytest-xdist: the server the restart tests share (module-scoped) starts once.
pytestmark = pytest.mark.xdist_group("local_server")

LONG_PROMPT = "hello world " * 1000  # ~2,000 tokens: more than the smallest KV cache (1,024) holds


def watched(**fields: object) -> LocalServerConfig:
    return LocalServerConfig(
        **{"enabled": True, "kv_cache_tokens": 1024, "health_check_interval": 0.5, **fields}
    )


def judge(server: LocalServer, **fields: object) -> JudgeClient:
    """A judge client on the local server, wired as a run wires it. The completion API: the tiny model's chat
    replies decode to nothing, its text continuations do not."""
    settings = {"api": "completion", "max_tokens": 2, "timeout": 20, "retry_backoff": 0.01, "cache": False}
    cfg = JudgeConfig(use_local_server=True, **{**settings, **fields})
    return judge_client("judge", cfg, {}, server, call_log=None, cache=None)


def ask(client: JudgeClient, prompt: str) -> JudgeResult:
    async def call() -> JudgeResult:
        try:
            return await client.complete([{"role": "user", "content": prompt}])
        finally:
            await client.aclose()

    return asyncio.run(call())


@pytest.fixture(scope="module")
def serving(tiny_model_dir, tmp_path_factory) -> Iterator[LocalServer]:
    """One supervised server the restart tests share; each leaves it serving."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with local_server(tiny_model_dir, watched(max_restarts=5), log_path) as server:
        yield server


def test_a_killed_server_is_restarted_on_its_port_and_judge_calls_succeed_again(serving, caplog):
    caplog.set_level(logging.WARNING, logger="mpo_agents.judges.supervisor")
    client = judge(serving)
    assert ask(client, "the cat").ok
    killed, restarts = serving.pid, serving.restarts
    os.kill(killed, signal.SIGKILL)

    result = ask(client, "the cat")  # refused, the server is restarted, the retry is answered

    assert result.ok and result.attempts >= 2
    assert serving.restarts == restarts + 1 and serving.pid != killed
    assert "stopped serving (its process exited with code -9); restarting it on the same port" in caplog.text


def test_a_prompt_that_kills_the_batching_worker_gets_the_server_restarted(serving, caplog):
    caplog.set_level(logging.WARNING, logger="mpo_agents.judges.supervisor")
    restarts = serving.restarts

    # Our client never sends a prompt the server's KV cache cannot hold (recorded as failed, not sent)...
    refused = ask(judge(serving, retries=0), LONG_PROMPT)
    assert not refused.ok and refused.error == "context_window" and serving.restarts == restarts
    # ... but another client of the server may. transformers 5.23: the continuous-batching worker dies on
    # such a prompt; the process lives on, every call then gets 503 "CB worker is dead", /health answers 503.
    killer = {"model": str(serving.model_dir), "prompt": LONG_PROMPT, "max_tokens": 2}
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{serving.url}/completions", json=killer, timeout=60)

    failed = ask(judge(serving, retries=0), "the cat")

    # A failed judgment, never a score: HTTP 503 from the dead worker, or, when the supervisor's periodic health
    # check caught the dead worker first and is restarting the server, a refused connection.
    assert not failed.ok and failed.error in {"server_error", "connection"}, failed.error
    assert serving.restarts == restarts + 1
    assert "its health check answered HTTP 503" in caplog.text and "cb_worker_dead" in caplog.text
    assert ask(judge(serving), "the cat").ok


def test_a_server_that_answers_health_but_cannot_generate_stops_the_calls_once_restarts_run_out(tmp_path):
    # The scripted judge server stands in here: `transformers serve` 5.23 reports a dead worker on /health,
    # so only a server whose health check lies shows that the 1-token completion probe catches it.
    port = free_port()
    always_503 = [sys.executable, str(REPO / "tests" / "support" / "judge_server.py"), "--port", str(port)]
    always_503 += ["--fault-rate", "1", "--faults", "503"]
    cfg = watched(port=port, max_restarts=1, health_check_interval=60)  # only a failed call triggers a check
    log_path = tmp_path / "server.log"

    with supervised_server(always_503, Path("test-judge"), cfg, port, log_path) as server:
        with pytest.raises(ServerError) as stopped:
            ask(judge(server), "the cat")
        assert server.restarts == 1
        with pytest.raises(ServerError):
            server.check()  # what the runner asks between nodes

    message = str(stopped.value)
    assert "it answers its health check, but a 1-token completion got HTTP 503" in message
    assert "local_server.max_restarts=1 restart(s) are used up" in message
    assert str(log_path) in message and "mpo resume" in message


HOLDER = """
import sys, time
from pathlib import Path
from mpo_agents.config import LocalServerConfig
from mpo_agents.judges.local_server import local_server
cfg = LocalServerConfig(enabled=True, continuous_batching=False)
with local_server(Path(sys.argv[1]), cfg, Path(sys.argv[2])) as server:
    print(server.url, flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_owner_takes_its_busy_server_and_the_servers_group_down_at_once(tiny_model_dir, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tiny_model_dir), str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    server = None
    try:
        url = holder.stdout.readline().strip()
        (server,) = [pid for pid in _descendants(holder.pid) if b"serve" in _cmdline(pid)]
        # A generation in flight: after SIGTERM the server waits for it to finish (65 s for these 2,000
        # tokens on a busy 2-core machine): the orphan the user saw next to the resumed run's server.
        busy = threading.Thread(target=_generate, args=(url, str(tiny_model_dir), 2000), daemon=True)
        busy.start()
        time.sleep(0.5)
        holder.kill()
        holder.wait(timeout=10)
        deadline = time.monotonic() + 3
        while (_alive(server) or _group(server)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server) and not _group(server)
    finally:
        holder.kill()
        if server is not None and _alive(server):  # the test failed: leave no orphan behind
            os.killpg(server, signal.SIGKILL)


def _generate(url: str, model: str, tokens: int) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
        httpx.post(
            f"{url}/completions",
            json={"model": model, "prompt": "the cat", "max_tokens": tokens},
            timeout=120,
        )


def test_a_run_whose_server_dies_with_no_restarts_left_stops_with_the_message(
    tmp_path, tiny_model_dir, judge_server
):
    scripted = judge_server()  # the judges stay scripted; the local server is watched all the same
    run_dir = tmp_path / "run"
    settings = {
        "schedule.iterations": 8,
        "local_server.enabled": "true",
        "local_server.model": str(tiny_model_dir),
        "local_server.kv_cache_tokens": 1024,
        "local_server.max_restarts": 0,
        "local_server.health_check_interval": 0.2,
    }
    run = start_mpo(
        *run_command(run_dir, run_overrides(tiny_model_dir, scripted.url, **settings)),
        env={"COLUMNS": "2000"},
    )
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "samples" / "iter-0001.jsonl").exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0][-3000:]
            time.sleep(0.01)
        (server,) = [pid for pid in _descendants(run.pid) if b"serve" in _cmdline(pid)]
        os.kill(server, signal.SIGKILL)
        output = run.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        run.kill()

    assert run.returncode == 2, output[-3000:]
    assert "the local judge server stopped serving (its process exited with code -9)" in output
    assert "local_server.max_restarts=0" in output and str(run_dir / "server.log") in output
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) < 8
    assert "restart(s) are used up" in (run_dir / "run.log").read_text()


# -- processes, as /proc sees them ---------------------------------------------------------------------------


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the fields after the command name, starting with the state


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (an orphan's reaper may be slow or absent in containers)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _group(pgid: int) -> list[int]:
    """Live processes in a process group: the server and anything it spawned."""
    found = []
    for entry in Path("/proc").iterdir():
        stat = _stat(entry.name) if entry.name.isdigit() else None
        if stat is not None and stat[0] != "Z" and int(stat[2]) == pgid:
            found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
