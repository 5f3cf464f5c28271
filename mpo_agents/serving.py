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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from mpo_agents.config import LocalServerConfig
from mpo_agents.errors import ServerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalServer:
    url: str  # OpenAI-compatible base URL, ending in /v1
    model_dir: Path
    kv_cache_tokens: int | None = None  # continuous batching's cache: no one call may need more

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


def _die_with_parent() -> None:
    """Runs in the server's child process: ask Linux to SIGTERM it when the CLI process dies, even by SIGKILL,
    so that a killed run never leaves an orphaned model server holding memory and a port."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


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
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (only calls prctl; safe before exec)
        )
    try:
        _wait_healthy(f"http://{cfg.host}:{port}/health", process, cfg.startup_timeout, log_path)
        kv_cache_tokens = cfg.kv_cache_tokens if cfg.continuous_batching else None
        yield LocalServer(f"http://{cfg.host}:{port}/v1", Path(model_dir), kv_cache_tokens)
    finally:
        _stop(process)
