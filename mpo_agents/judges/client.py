"""One LLM endpoint per role: bounded concurrency, hard timeouts, retries, and a log line per attempt.

Judge failures (timeouts, 429, 5xx, lost connections, unreadable replies) never raise: after the retries
they come back as `JudgeResult(ok=False, error=<kind>)`, so the caller records a failed judgment instead of
a made-up score; so does a prompt that cannot fit the endpoint's context, without being sent. Only
configuration problems (bad key, unknown model, refused request) raise `JudgeError`, naming the fix, and so
does a local judge server that failed for good (`ServerError`, see `on_endpoint_error`). LiteLLM is imported
on the first call, not at import time (it takes seconds).

Beside it: failures.py (error kinds, exception classification), pools.py (per-event-loop connections and the
request sent through them), usage.py (token and cost accounting), responses.py (reading a response) and
mpo_agents/litellm_import.py (the one import of LiteLLM).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from mpo_agents.config import JudgeConfig
from mpo_agents.errors import JudgeError, ServerError
from mpo_agents.judges.cache import JudgmentCache, cache_key
from mpo_agents.judges.context_window import ContextCheck, ContextWindow, prompt_of
from mpo_agents.judges.failures import (
    CONTEXT_WINDOW,
    ENDPOINT_DOWN,
    FATAL,
    PARSE_FAILURES,
    RETRYABLE,
    classify,
    fatal_message,
    parse_reply,
)
from mpo_agents.judges.pools import LoopPools
from mpo_agents.judges.records import CallLog, CallRecord
from mpo_agents.judges.responses import answered_by, read_reply
from mpo_agents.judges.routing import Deployment, attempt_budget
from mpo_agents.judges.usage import JudgeStats, Usage, UsageLedger, cost_of

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A greedy model repeats the same unreadable reply; retries after one sample at least this warm.
PARSE_RETRY_TEMPERATURE = 0.7


def nonempty(reply: str) -> str | None:
    """The default `parse`: any non-blank reply is accepted as is."""
    return reply if reply.strip() else None


@dataclass(frozen=True)
class JudgeResult(Generic[T]):
    """The outcome of one `complete` call, after all its attempts."""

    ok: bool
    value: T | None  # what `parse` returned; None whenever ok is False
    reply: str | None  # the last attempt's reply text (None if that attempt got no reply)
    error: str | None  # the last attempt's error kind when ok is False
    attempts: int
    latency_s: float  # wall time of the whole call: waiting for a slot, attempts and backoff
    prompt_tokens: int  # summed over attempts
    completion_tokens: int
    detail: str | None = None  # what the last failure said (e.g. why a prompt was not sent)


@dataclass
class _Attempt:
    value: Any
    reply: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    detail: str | None = None

    @property
    def retry(self) -> bool:
        return self.error in RETRYABLE


@dataclass(frozen=True)
class _Request:
    """What stays the same across the attempts of one call."""

    messages: list[dict[str, str]]
    parse: Callable[[str], Any]
    max_tokens: int
    stop: list[str] | None
    metadata: dict[str, Any]


class JudgeClient:
    """Calls one role's model through LiteLLM. Build one per role and share it across the run."""

    def __init__(
        self,
        role: str,
        cfg: JudgeConfig,
        *,
        api_base: str | None,
        api_key: str | None,
        call_log: CallLog | None,
        cache: JudgmentCache | None = None,
        deployments: Sequence[Deployment] = (),
        fallbacks: Sequence[Deployment] = (),
        context_window: ContextWindow | None = None,
        on_endpoint_error: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`api_base`/`api_key` serve `cfg.model`; `deployments` are more endpoints load-balanced with it and
        `fallbacks` endpoints tried in order when a call fails on all of them (both through LiteLLM's Router).
        `context_window` is `cfg.model`'s (default: `cfg.context_tokens`, else LiteLLM's, asked on first use).
        `on_endpoint_error` is awaited after an attempt fails with a server or connection error, before the
        retry: for the local judge server, it has the server checked (restarted if it stopped serving) and
        raises ServerError once it failed for good."""
        self.role = role
        self.cfg = cfg
        self.cache = cache if cfg.cache else None
        self.api_base = api_base
        self._api_key = api_key  # passed to LiteLLM only; never logged, never in a record or an error message
        if context_window is None and cfg.context_tokens:
            context_window = ContextWindow(cfg.context_tokens, f"{role}.context_tokens", cfg.model)
        primary = Deployment(cfg.model, api_base, api_key, cfg.rpm, cfg.tpm, window=context_window)
        self._primary = [primary, *deployments]
        self._fallbacks = list(fallbacks)
        # Every endpoint's context counts: the Router may send a call to any deployment or fallback.
        self._context = ContextCheck([(d.model, d.window) for d in self._primary + self._fallbacks])
        self.routed = len(self._primary) > 1 or bool(self._fallbacks) or bool(cfg.rpm or cfg.tpm)
        # A routed attempt may chain a failover and each fallback, each with its own timeout.
        chained = attempt_budget(cfg, len(self._primary), len(self._fallbacks)) if self.routed else 1
        self._stall_limit = chained * cfg.timeout + min(5.0, 0.5 + 0.1 * cfg.timeout)
        self.call_log = call_log
        self._on_endpoint_error = on_endpoint_error
        self._ledger = UsageLedger()
        self._pools = LoopPools(
            role,
            cfg,
            api_base=api_base,
            api_key=api_key,
            primary=self._primary,
            fallbacks=self._fallbacks,
            routed=self.routed,
        )

    def __repr__(self) -> str:
        return f"JudgeClient(role={self.role!r}, model={self.cfg.model!r}, api={self.cfg.api!r})"

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        parse: Callable[[str], T | None] = nonempty,  # type: ignore[assignment]
        metadata: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
    ) -> JudgeResult[T]:
        """Send `messages` and return `parse(reply)`, retrying failures; see the module docstring.

        `parse` returning None counts as an unparseable reply (retried at a warmer temperature).
        `metadata` (iteration, node, sample key, ...) is copied into every log record of this call.
        """
        request = _Request(messages, parse, max_tokens or self.cfg.max_tokens, stop, dict(metadata or {}))
        attempts: list[_Attempt] = []
        started = time.perf_counter()
        key = None
        if self.cache is not None:
            key = cache_key(
                self.cfg.model, self.cfg.api, messages, self.cfg.temperature, request.max_tokens, stop
            )
            hit = self._from_cache(request, key, started)
            if hit is not None:
                return hit
        too_long = self._context.refusal(request.messages, self.cfg.api, request.max_tokens)
        if too_long is not None:
            return self._not_sent(request, too_long, started)

        # The first attempt goes straight out; a retryable failure hands over to tenacity for the rest: at most
        # `retries` more, after a jittered exponential backoff, and after an unreadable reply every later attempt
        # samples at least PARSE_RETRY_TEMPERATURE warm. (Building tenacity's machinery for every call cost as
        # much as the rest of this method; most calls never retry.)
        try:
            last = await self._attempt(request, 1, self.cfg.temperature)
            attempts.append(last)
            if last.retry and self.cfg.retries > 0:
                last = await self._retry(request, attempts)
        except (JudgeError, ServerError):
            self._count_call(ok=False)
            raise
        self._count_call(ok=last.error is None)
        if key is not None and last.error is None and last.reply is not None:
            await self.cache.store(key, last.reply)  # only judgments that parsed; a failure is asked again
        if last.error is not None:
            logger.info("%s call failed after %d attempt(s): %s", self.role, len(attempts), last.error)
        return JudgeResult(
            ok=last.error is None,
            value=last.value if last.error is None else None,
            reply=last.reply,
            error=last.error,
            attempts=len(attempts),
            latency_s=time.perf_counter() - started,
            prompt_tokens=sum(a.prompt_tokens for a in attempts),
            completion_tokens=sum(a.completion_tokens for a in attempts),
            detail=last.detail,
        )

    def _not_sent(self, request: _Request, reason: str, started: float) -> JudgeResult:
        """A call failed before sending (its prompt does not fit): logged as attempt 0 with the reason, so the
        call log still explains the failed judgment; not retried, as the same prompt cannot fit later."""
        result = self._unsent(request, started, value=None, reply=None, error=CONTEXT_WINDOW, detail=reason)
        logger.warning("%s call not sent: %s", self.role, reason)
        return result

    def _from_cache(self, request: _Request, key: str, started: float) -> JudgeResult | None:
        """A stored reply for this exact request, parsed again (the parser may have changed); logged as an
        attempt with `cached` set and no tokens, so the call log still explains every score."""
        reply = self.cache.get(key)
        value = request.parse(reply) if reply is not None else None
        if value is None:
            return None
        return self._unsent(request, started, value=value, reply=reply, error=None, detail=None)

    def _unsent(
        self,
        request: _Request,
        started: float,
        *,
        value: Any,
        reply: str | None,
        error: str | None,
        detail: str | None,
    ) -> JudgeResult:
        """The result of a call that sent no request: answered from the cache (`error` None), or refused
        before sending. Logged as attempt 0, with no tokens."""
        self._record(
            self._call_record(
                request,
                timestamp=datetime.now(UTC).isoformat(),
                attempt=0,
                temperature=self.cfg.temperature,
                reply=reply,
                finish_reason=None,
                error=error,
                error_detail=detail,
                latency_s=0.0,
                prompt_tokens=0,
                completion_tokens=0,
                cached=error is None,
            )
        )
        self._count_call(ok=error is None)
        return JudgeResult(
            ok=error is None,
            value=value,
            reply=reply,
            error=error,
            attempts=0,
            latency_s=time.perf_counter() - started,
            prompt_tokens=0,
            completion_tokens=0,
            detail=detail,
        )

    def stats(self) -> JudgeStats:
        """A snapshot of this client's totals: calls, failures and errors as counted, the rest summed over the
        per-(iteration, node) usage that every attempt and cache hit is recorded in."""
        return self._ledger.stats()

    def usage(self, iteration: int) -> dict[str, Usage]:
        """This process's calls of one iteration, by node (from each call's metadata)."""
        return self._ledger.usage(iteration)

    async def aclose(self) -> None:
        """Close pooled connections opened on the running event loop."""
        await self._pools.close_current()
        if self.cache is not None:
            self.cache.checkpoint()

    # -- one attempt ----------------------------------------------------------------------------------------
    async def _attempt(self, request: _Request, number: int, temperature: float) -> _Attempt:
        # The first one imports LiteLLM (seconds): kept out of the timed call.
        resources = self._pools.current()
        value = reply = finish_reason = error = detail = served_by = None
        prompt_tokens = completion_tokens = 0
        cost = 0.0
        failure: Exception | None = None
        async with resources.semaphore:
            timestamp = datetime.now(UTC).isoformat()
            started = time.perf_counter()
            try:
                # LiteLLM enforces cfg.timeout on the HTTP exchange; this outer limit also covers a server
                # that trickles bytes (every read succeeds, so no read timeout fires) and any other stall.
                # (asyncio.timeout rather than wait_for, which runs the request as a task of its own.)
                async with asyncio.timeout(self._stall_limit):
                    response = await self._pools.send(
                        resources, request.messages, temperature, request.max_tokens, request.stop
                    )
            except Exception as exc:
                error = classify(exc)
                if error is None:
                    raise  # not an endpoint failure: a bug, let it surface
                failure, detail = exc, self._redact(" ".join(str(exc).split()) or type(exc).__name__)[:500]
            else:
                reply, finish_reason, prompt_tokens, completion_tokens = read_reply(response, self.cfg.api)
                cost = cost_of(response)
                served_by = answered_by(response) if self.routed else None
                value, error = parse_reply(reply, finish_reason, request.parse)
            latency = time.perf_counter() - started

        self._record(
            self._call_record(
                request,
                timestamp=timestamp,
                attempt=number,
                temperature=temperature,
                reply=reply,
                finish_reason=finish_reason,
                error=error,
                error_detail=detail,
                latency_s=round(latency, 4),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
                served_by=served_by,
            )
        )
        if error in FATAL:
            message = fatal_message(error, detail or "", role=self.role, cfg=self.cfg, api_base=self.api_base)
            raise JudgeError(message) from failure
        if error is not None:
            logger.debug("%s attempt %d failed: %s %s", self.role, number, error, detail or "")
        if error in ENDPOINT_DOWN and self._on_endpoint_error is not None:
            await self._on_endpoint_error()
        return _Attempt(value, reply, error, prompt_tokens, completion_tokens, detail)

    async def _retry(self, request: _Request, attempts: list[_Attempt]) -> _Attempt:
        """Go on after a first attempt that failed retryably (`attempts[0]`), as tenacity decides: its outcome
        counts as tenacity's first attempt, then each retry follows a backoff until one does not fail
        retryably or `retries` more were made. Returns the last attempt."""
        made = [attempts[0]]  # handed to tenacity as its first attempt's outcome, not sent again

        async def attempt() -> _Attempt:
            if made:
                return made.pop()
            warmer = any(a.error in PARSE_FAILURES for a in attempts)
            temperature = (
                max(self.cfg.temperature, PARSE_RETRY_TEMPERATURE) if warmer else self.cfg.temperature
            )
            outcome = await self._attempt(request, len(attempts) + 1, temperature)
            attempts.append(outcome)
            return outcome

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.retries + 1),
            wait=wait_random_exponential(multiplier=self.cfg.retry_backoff, max=self.cfg.retry_backoff_max),
            retry=retry_if_result(lambda outcome: outcome.retry),
            retry_error_callback=_last_outcome,
            reraise=True,
        )
        return await retrying(attempt)

    # -- helpers --------------------------------------------------------------------------------------------

    def _count_call(self, *, ok: bool) -> None:
        self._ledger.count_call(ok=ok)

    def _call_record(self, request: _Request, **attempt: Any) -> CallRecord:
        """A log record of one attempt (or cache hit) of `request`: the role's and the request's fields plus
        what happened in this attempt."""
        chat = self.cfg.api == "chat"
        return CallRecord(
            role=self.role,
            model=self.cfg.model,
            api=self.cfg.api,
            messages=request.messages if chat else None,
            prompt=None if chat else prompt_of(request.messages),
            metadata=request.metadata,
            **attempt,
        )

    def _record(self, record: CallRecord) -> None:
        self._ledger.add(record)
        if self.call_log is not None:
            self.call_log.write(record)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _last_outcome(state: RetryCallState) -> _Attempt:
    assert state.outcome is not None
    return state.outcome.result()
