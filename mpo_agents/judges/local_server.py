"""The local judge server: `transformers serve` on loopback, started by the CLI, kept serving by a Supervisor
(restarted on the same port when it stops serving, a bounded number of times) and stopped at the end."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpo_agents.config import LocalServerConfig
from mpo_agents.errors import ServerError
from mpo_agents.judges.supervisor import Supervisor


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalServer:
    """The local judge server as the run sees it: where it listens, and what a failed call does about it."""

    def __init__(
        self,
        url: str,
        model_dir: Path,
        supervisor: Supervisor | None = None,
        kv_cache_tokens: int | None = None,
    ) -> None:
        self.url = url  # OpenAI-compatible base URL, ending in /v1
        self.model_dir = Path(model_dir)
        self.kv_cache_tokens = kv_cache_tokens  # continuous batching's cache: no one call may need more
        self._supervisor = supervisor  # None: a server this process does not own (nothing to restart)

    @property
    def litellm_model(self) -> str:
        # `transformers serve DIR` pins DIR and refuses any other model name, so the name sent is the path.
        return f"openai/{self.model_dir}"

    @property
    def pid(self) -> int | None:
        """The process id of the server now running (it changes with every restart)."""
        return self._supervisor.pid if self._supervisor else None

    @property
    def restarts(self) -> int:
        return self._supervisor.restarts if self._supervisor else 0

    def check(self) -> None:
        """Raise ServerError once the server has stopped serving for good (its restarts are used up)."""
        if self._supervisor is not None and self._supervisor.failure is not None:
            raise ServerError(self._supervisor.failure)

    async def recovered(self) -> None:
        """After a call to the server failed with a server or connection error: have the server checked at
        once (and restarted if it stopped serving) and wait for the verdict, so that the call's retry meets a
        serving server. Raises ServerError once the server has failed for good."""
        if self._supervisor is None:
            return
        ticket = self._supervisor.request_check()
        while not self._supervisor.checked(ticket):
            await asyncio.sleep(0.1)
        self.check()


@contextmanager
def local_server(model_dir: Path, cfg: LocalServerConfig, log_path: Path) -> Iterator[LocalServer]:
    """Run `transformers serve` for the duration of the block, supervised; always stopped on exit."""
    port = cfg.port or free_port(cfg.host)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if cfg.cpu_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cfg.cpu_threads)
    with supervised_server(
        _serve_command(model_dir, cfg, port), model_dir, cfg, port, log_path, env
    ) as server:
        yield server


@contextmanager
def supervised_server(
    command: list[str],
    model_dir: Path,
    cfg: LocalServerConfig,
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
) -> Iterator[LocalServer]:
    """Any OpenAI-compatible server `command` listening on `cfg.host:port`, under a Supervisor for the
    duration of the block (`local_server` gives it the `transformers serve` command)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = f"http://{cfg.host}:{port}"
    supervisor = Supervisor(command, env or dict(os.environ), root, str(model_dir), cfg, log_path)
    try:
        supervisor.start()
        kv_cache_tokens = cfg.kv_cache_tokens if cfg.continuous_batching else None
        yield LocalServer(f"{root}/v1", Path(model_dir), supervisor, kv_cache_tokens)
    finally:
        supervisor.close()


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
