"""Keeps one model server process serving: a thread that starts it, watches it (process, health check, a
1-token completion when a call failed), restarts it a bounded number of times, and stops it; and the Linux
death signal that takes it down with the run, even a SIGKILLed one."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import httpx

from mpo_agents.config import LocalServerConfig
from mpo_agents.errors import ServerError

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # a normal stop: SIGTERM, then SIGKILL; a server busy with a batch took a minute to leave
HEALTH_TIMEOUT_S = 5.0
# A 1-token completion waits behind the batch in flight; no answer in this long counts as busy, not dead.
PROBE_TIMEOUT_S = 60.0


class Supervisor:
    """Owns the server process in one thread for the server's whole life: starts it, checks it every
    `health_check_interval` seconds (and at once when a failed call asks), restarts it on the same port when
    it stops serving, at most `max_restarts` times, then records the failure for the run to raise; stops it
    at the end.

    Every (re)start happens in this thread because Linux sends the death signal when the *thread* that spawned
    a child ends, not its process: a server started from a short-lived thread would be killed with it.
    """

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        root_url: str,
        model_name: str,
        cfg: LocalServerConfig,
        log_path: Path,
    ) -> None:
        self._command, self._env, self._root, self._model_name = command, env, root_url, model_name
        self._cfg, self._log_path = cfg, log_path
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._wake, self._stopping, self._ready = threading.Event(), threading.Event(), threading.Event()
        self._requested = self._checked = 0  # check tickets: asked for, and answered
        self._silent_since: float | None = None  # when the health check last started timing out
        self._startup_error: Exception | None = None
        self.failure: str | None = None  # set once the server failed for good: the message to raise
        self.restarts = 0
        self._thread = threading.Thread(target=self._run, name="local-judge-server", daemon=True)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Start the server and wait until it is healthy; raises ServerError if it never is."""
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def close(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after STOP_GRACE_S) and the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_GRACE_S + HEALTH_TIMEOUT_S + 5)
        process = self._process
        if self._thread.is_alive() and process is not None:  # stuck in a probe: do not wait a minute for it
            _end(process, grace=0)

    def request_check(self) -> int:
        """Ask for a check now (with a 1-token completion); `checked(ticket)` says when it is done."""
        with self._lock:
            self._requested += 1
            ticket = self._requested
        self._wake.set()
        return ticket

    def checked(self, ticket: int) -> bool:
        with self._lock:
            answered = self._checked >= ticket
        return answered or self.failure is not None or not self._thread.is_alive()

    # -- the supervising thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._start_process()
        except Exception as exc:  # noqa: BLE001 - start() raises it, rather than yield a dead server
            self._startup_error = exc
        finally:
            self._ready.set()
        try:
            if self._startup_error is None:
                self._watch()
        except Exception as exc:  # a bug here must stop the run, not leave calls waiting forever
            log.exception("the local judge server's supervisor failed")
            self.failure = (
                f"the local judge server's supervisor failed ({exc!r}); its log is {self._log_path}"
            )
        finally:
            if self._process is not None:
                _end(self._process, STOP_GRACE_S)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._cfg.health_check_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                ticket = self._requested
            reason = self._diagnose(probe=ticket > self._checked)
            if reason is not None:
                self._restart(reason)
            with self._lock:
                self._checked = ticket
            if self.failure is not None:
                return

    def _restart(self, reason: str) -> None:
        limit = self._cfg.max_restarts
        while self.restarts < limit and not self._stopping.is_set():
            self.restarts += 1
            log.warning(
                "the local judge server stopped serving (%s); restarting it on the same port "
                "(restart %d of local_server.max_restarts=%d; its log is %s)",
                reason,
                self.restarts,
                limit,
                self._log_path,
            )
            assert self._process is not None
            _end(self._process, grace=0)  # it no longer serves: nothing to finish gracefully
            try:
                self._start_process()
            except ServerError as exc:
                reason = f"restart {self.restarts} failed: {exc}"
                continue
            log.warning("the local judge server serves again after restart %d", self.restarts)
            return
        if not self._stopping.is_set():
            self.failure = (
                f"the local judge server stopped serving ({reason}) and local_server.max_restarts={limit} "
                f"restart(s) are used up, so the run stops here instead of failing every judgment. Its log "
                f"is {self._log_path}: its end says why (a 'CB worker' error after a long prompt means the "
                "prompt did not fit local_server.kv_cache_tokens: raise it or shorten the prompts). Fix the "
                "cause, then continue: `mpo resume RUN_DIR` for a training run, otherwise run the command "
                "again."
            )
            log.error("%s", self.failure)

    def _start_process(self) -> None:
        log.info("starting local judge server: %s", " ".join(self._command))
        with open(self._log_path, "ab") as server_log:
            try:
                # A new session, so stopping it also stops any worker processes it spawned.
                self._process = subprocess.Popen(
                    self._command,
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    start_new_session=True,
                    preexec_fn=_death_signal(os.getpid()),  # noqa: PLW1509 (only prctl; safe before exec)
                )
            except OSError as exc:
                raise ServerError(f"could not start the local model server ({exc}): {self._command}") from exc
        self._silent_since = None
        try:
            self._wait_healthy()
        except ServerError:
            _end(self._process, grace=0)
            raise

    def _wait_healthy(self) -> None:
        assert self._process is not None
        url, timeout = f"{self._root}/health", self._cfg.startup_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if self._process.poll() is not None:
                tail = self._log_path.read_text(errors="replace")[-2000:] if self._log_path.exists() else ""
                raise ServerError(
                    f"the local model server exited with code {self._process.returncode}:\n{tail}"
                )
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self._stopping.wait(0.5)
        if self._stopping.is_set():
            raise ServerError("the local model server was stopped before it became healthy")
        raise ServerError(
            f"the local model server did not answer {url} within {timeout:.0f} s "
            f"(raise local_server.startup_timeout; its log is {self._log_path})"
        )

    def _diagnose(self, *, probe: bool) -> str | None:
        """Why the server does not serve, or None while it does (or the evidence is only slowness: a busy
        server answers late; a dead one refuses, errs or exits)."""
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            return f"its process exited with code {code}"
        try:
            health = httpx.get(f"{self._root}/health", timeout=HEALTH_TIMEOUT_S)
        except httpx.TimeoutException:
            return self._silent()
        except httpx.HTTPError as exc:
            with suppress(
                subprocess.TimeoutExpired
            ):  # a refused connection is often a process on its way out
                self._process.wait(timeout=1.0)
            if self._process.returncode is not None:
                return f"its process exited with code {self._process.returncode}"
            return f"its health check failed: {type(exc).__name__} {exc}"
        self._silent_since = None
        if health.status_code != 200:
            return f"its health check answered HTTP {health.status_code} {health.text[:200]}"
        return self._probe() if probe else None

    def _silent(self) -> str | None:
        """A health check timed out: a hang once it has lasted as long as the server may take to start."""
        now = time.monotonic()
        if self._silent_since is None:
            self._silent_since = now
        silent = now - self._silent_since
        if silent >= self._cfg.startup_timeout:
            return f"its health check has not answered for {silent:.0f} s"
        log.info("the local judge server's health check timed out (busy?); checking again")
        return None

    def _probe(self) -> str | None:
        """A 1-token completion: a server can answer its health check yet fail every generation."""
        request = {"model": self._model_name, "prompt": "ping", "max_tokens": 1}
        try:
            reply = httpx.post(f"{self._root}/v1/completions", json=request, timeout=PROBE_TIMEOUT_S)
        except httpx.TimeoutException:
            return None
        except httpx.HTTPError as exc:
            return f"a 1-token completion failed: {type(exc).__name__} {exc}"
        if reply.status_code >= 500:
            return (
                f"it answers its health check, but a 1-token completion got HTTP {reply.status_code} "
                f"{reply.text[:200]}"
            )
        return None


def _death_signal(parent: int) -> Callable[[], None] | None:
    """What the server's child process runs before exec: ask Linux to SIGKILL it when the thread that spawned
    it ends, which includes any death of the run process (even by SIGKILL), so that a killed run never leaves
    an orphaned model server holding memory and a port next to the resumed run's. SIGKILL, not SIGTERM: a
    server busy with a batch took a minute to leave after SIGTERM. (`transformers serve` runs in one process,
    threads only, so no grandchild outlives it.) None off Linux."""
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
