"""The local judge server: `transformers serve` on loopback, started, health-checked and stopped by the CLI."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from mpo_agents.config import LocalServerConfig
from mpo_agents.errors import ServerError

log = logging.getLogger(__name__)
STOP_GRACE_S = 5.0  # a normal stop: SIGTERM, then SIGKILL; a server answering a long generation waits for it


@dataclass(frozen=True)
class LocalServer:
    url: str  # OpenAI-compatible base URL, ending in /v1
    model_dir: Path

    @property
    def litellm_model(self) -> str:
        # `transformers serve DIR` pins DIR and refuses any other model name, so the name sent is the path.
        return f"openai/{self.model_dir}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _serve_command(model_dir: Path, cfg: LocalServerConfig, port: int) -> list[str]:
    executable = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
    if not Path(executable).exists():
        raise ServerError(
            "`transformers` CLI not found; install the serving extra: pip install -e '.[serve]'"
        )
    command = [
        executable,
        "serve",
        str(model_dir),
        "--host",
        cfg.host,
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    command += ["--dtype", "float32"]
    if cfg.continuous_batching:
        block = 32
        command += [
            "--continuous-batching",
            "--cb-block-size",
            str(block),
            "--cb-num-blocks",
            str(cfg.kv_cache_tokens // block),
        ]
    return command


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise ServerError(f"the local model server exited with code {process.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServerError(
        f"the local model server did not answer {url} within {timeout:.0f} s "
        f"(raise local_server.startup_timeout; its log is {log_path})"
    )


def _death_signal(parent: int) -> Callable[[], None] | None:
    """What the server's child process runs before exec: ask Linux to SIGKILL it when the thread that spawned
    it ends, which includes any death of the run process (even by SIGKILL), so that a killed run never leaves
    an orphaned model server holding memory and a port next to the resumed run's. SIGKILL, not SIGTERM: a
    server answering a long generation waits for it after SIGTERM (over a minute). (`transformers serve` runs
    in one process, threads only, so no grandchild outlives it.) None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child should only call it
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the run died between fork and prctl: nothing would ever signal us
            os._exit(1)

    return set_death_signal


def _end(process: subprocess.Popen, grace: float) -> None:
    """Stop the server's process group: SIGTERM and up to `grace` seconds to leave, then SIGKILL."""
    # The group is signalled only while the leader is unreaped (a zombie keeps its pid), never a reused id.
    if grace > 0 and process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("the local judge server (pid %d) did not exit after SIGKILL", process.pid)


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):  # it has just exited by itself
        os.killpg(pid, signum)


@contextmanager
def local_server(model_dir: Path, cfg: LocalServerConfig, log_path: Path) -> Iterator[LocalServer]:
    """Run `transformers serve` for the duration of the block; always stopped on exit, also on errors."""
    port = cfg.port or free_port(cfg.host)
    command = _serve_command(model_dir, cfg, port)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if cfg.cpu_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cfg.cpu_threads)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting local judge server: %s", " ".join(command))
    with open(log_path, "ab") as server_log:
        # A new session, so stopping it also stops any worker processes it spawned.
        process = subprocess.Popen(
            command,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_death_signal(os.getpid()),  # noqa: PLW1509 (only prctl; safe before exec)
        )
    try:
        _wait_healthy(f"http://{cfg.host}:{port}/health", process, cfg.startup_timeout, log_path)
        yield LocalServer(url=f"http://{cfg.host}:{port}/v1", model_dir=Path(model_dir))
    finally:
        _end(process, STOP_GRACE_S)
