"""The local judge server never outlives the run that started it. Real `transformers serve` on the tiny model
(~5 s per start)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HOLDER = """
import sys, time
from pathlib import Path
from mpo_agents.config import LocalServerConfig
from mpo_agents.serving import local_server
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
