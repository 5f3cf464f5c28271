"""One LLM endpoint per role: bounded concurrency, hard timeouts, retries, and a log line per attempt.

Judge failures (timeouts, 429, 5xx, lost connections, unreadable replies) never raise: after the retries
they come back as `JudgeResult(ok=False, error=<kind>)`, so the caller records a failed judgment instead of
a made-up score; so does a prompt that cannot fit the endpoint's context, without being sent. Only
configuration problems (bad key, unknown model, refused request) raise `JudgeError`, naming the fix, and so
does a local judge server that failed for good (`ServerError`, see `on_endpoint_error`). LiteLLM is imported
on the first call, not at import time (it takes seconds).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
from mpo_agents.judges.records import CallLog, CallRecord
from mpo_agents.judges.routing import Deployment, attempt_budget, build_router

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Error kinds. Retried: the endpoint or the model may do better next time.
TIMEOUT = "timeout"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
CONNECTION = "connection"
EMPTY = "empty"
UNPARSEABLE = "unparseable"
TRUNCATED = "truncated"  # unparseable and cut off by max_tokens
# Not retried, not raised: this input will fail the same way again, but the run can go on.
CONTEXT_WINDOW = "context_window"
CONTENT_POLICY = "content_policy"
# Raised as JudgeError: the configuration is wrong and every call would fail.
AUTH = "auth"
NOT_FOUND = "not_found"
BAD_REQUEST = "bad_request"

RETRYABLE = frozenset({TIMEOUT, RATE_LIMITED, SERVER_ERROR, CONNECTION, EMPTY, UNPARSEABLE, TRUNCATED})
PARSE_FAILURES = frozenset({EMPTY, UNPARSEABLE, TRUNCATED})
FATAL = frozenset({AUTH, NOT_FOUND, BAD_REQUEST})
# The endpoint itself may be down: worth `on_endpoint_error` (a timeout is more often a busy server).
ENDPOINT_DOWN = frozenset({SERVER_ERROR, CONNECTION})
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
class JudgeStats:
    """Running totals of one client."""

    calls: int = 0
    failures: int = 0  # calls that ended with ok=False
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # summed over attempts (time on the wire, not waiting for a slot)
    cost_usd: float = 0.0  # LiteLLM's price of the tokens; 0 for models without a price (local ones)
    cached: int = 0  # calls answered from the judgment cache
    errors: dict[str, int] = field(default_factory=dict)  # attempts that failed, by kind


@dataclass
class Usage:
    """What the calls of one (iteration, node) cost: what a run reports per role, node and iteration."""

    calls: int = 0
    attempts: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0


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


@dataclass
class _LoopResources:
    """What must belong to one event loop: the concurrency gate and the pooled HTTP clients."""

    semaphore: asyncio.Semaphore
    text_client: Any = None  # openai.AsyncOpenAI for the completion API, see `_make_text_client`
    router: Any = None  # litellm.Router of a routed role (it pools a client per deployment)


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
        self._stats = JudgeStats()
        self._usage: dict[tuple[int | None, str], Usage] = {}
        self._lock = threading.Lock()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
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

        async def attempt_once() -> _Attempt:
            warmer = any(a.error in PARSE_FAILURES for a in attempts)
            temperature = self.cfg.temperature
            if warmer:
                temperature = max(temperature, PARSE_RETRY_TEMPERATURE)
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
        try:
            last: _Attempt = await retrying(attempt_once)
        except (JudgeError, ServerError):
            self._count_call(ok=False)
            raise
        self._count_call(ok=last.error is None)
        if key is not None and last.error is None and last.reply is not None:
            self.cache.put(key, last.reply)  # only judgments that parsed; a failure is asked again next time
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
        self._record_unsent(request, reply=None, error=CONTEXT_WINDOW, detail=reason)
        self._count_call(ok=False)
        logger.warning("%s call not sent: %s", self.role, reason)
        return JudgeResult(
            ok=False,
            value=None,
            reply=None,
            error=CONTEXT_WINDOW,
            attempts=0,
            latency_s=time.perf_counter() - started,
            prompt_tokens=0,
            completion_tokens=0,
            detail=reason,
        )

    def _record_unsent(
        self,
        request: _Request,
        *,
        reply: str | None,
        error: str | None,
        detail: str | None,
        cached: bool = False,
    ) -> None:
        """Log a call that sent no request (answered from the cache, or refused before sending) as attempt 0."""
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
                cached=cached,
            )
        )

    def _from_cache(self, request: _Request, key: str, started: float) -> JudgeResult | None:
        """A stored reply for this exact request, parsed again (the parser may have changed); logged as an
        attempt with `cached` set and no tokens, so the call log still explains every score."""
        reply = self.cache.get(key)
        value = request.parse(reply) if reply is not None else None
        if value is None:
            return None
        self._record_unsent(request, reply=reply, error=None, detail=None, cached=True)
        self._count_call(ok=True)
        return JudgeResult(
            ok=True,
            value=value,
            reply=reply,
            error=None,
            attempts=0,
            latency_s=time.perf_counter() - started,
            prompt_tokens=0,
            completion_tokens=0,
        )

    def stats(self) -> JudgeStats:
        """A snapshot of this client's totals: calls, failures and errors as counted, the rest summed over the
        per-(iteration, node) usage that every attempt and cache hit is recorded in."""
        with self._lock:
            usages = list(self._usage.values())
            return dataclasses.replace(
                self._stats,
                errors=dict(self._stats.errors),
                attempts=sum(u.attempts for u in usages),
                cached=sum(u.cached for u in usages),
                prompt_tokens=sum(u.prompt_tokens for u in usages),
                completion_tokens=sum(u.completion_tokens for u in usages),
                latency_s=sum(u.latency_s for u in usages),
                cost_usd=sum(u.cost_usd for u in usages),
            )

    async def aclose(self) -> None:
        """Close pooled connections opened on the running event loop."""
        resources = self._per_loop.pop(asyncio.get_running_loop(), None)
        if resources is not None and resources.text_client is not None:
            await resources.text_client.close()
        if resources is not None and resources.router is not None:
            resources.router.discard()  # unhooks its callbacks from LiteLLM's process-wide lists
        if self.cache is not None:
            self.cache.checkpoint()

    # -- one attempt ----------------------------------------------------------------------------------------
    async def _attempt(self, request: _Request, number: int, temperature: float) -> _Attempt:
        resources = self._resources()  # the first one imports LiteLLM (seconds): kept out of the timed call
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
                response = await asyncio.wait_for(
                    self._call(request, temperature, resources), timeout=self._stall_limit
                )
            except Exception as exc:
                error = _classify(exc)
                if error is None:
                    raise  # not an endpoint failure: a bug, let it surface
                failure, detail = exc, self._redact(" ".join(str(exc).split()) or type(exc).__name__)[:500]
            else:
                reply, finish_reason, prompt_tokens, completion_tokens = _read(response, self.cfg.api)
                cost = _cost_of(response)
                served_by = _served_by(response) if self.routed else None
                if not reply.strip():
                    error = EMPTY
                else:
                    value = request.parse(reply)
                    if value is None:
                        error = TRUNCATED if finish_reason == "length" else UNPARSEABLE
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
            raise JudgeError(self._fatal_message(error, detail or "")) from failure
        if error is not None:
            logger.debug("%s attempt %d failed: %s %s", self.role, number, error, detail or "")
        if error in ENDPOINT_DOWN and self._on_endpoint_error is not None:
            await self._on_endpoint_error()
        return _Attempt(value, reply, error, prompt_tokens, completion_tokens, detail)

    async def _call(self, request: _Request, temperature: float, resources: _LoopResources) -> Any:
        litellm = _litellm()
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": request.max_tokens}
        if request.stop:
            params["stop"] = request.stop
        if resources.router is not None:  # the Router holds each deployment's model, endpoint and key
            if self.cfg.api == "chat":
                return await resources.router.acompletion(
                    model=self.role, messages=request.messages, **params
                )
            return await resources.router.atext_completion(
                model=self.role, prompt=prompt_of(request.messages), **params
            )
        params |= {
            "model": self.cfg.model,
            "api_base": self.api_base,
            "api_key": self._api_key,
            "timeout": self.cfg.timeout,
            # Ours is the only retry layer: LiteLLM's and the OpenAI SDK's would multiply and hide attempts.
            "max_retries": 0,
            "num_retries": 0,
        }
        if self.cfg.api == "chat":
            return await litellm.acompletion(messages=request.messages, **params)
        if resources.text_client is not None:
            params["client"] = resources.text_client
        return await litellm.atext_completion(prompt=prompt_of(request.messages), **params)

    # -- helpers --------------------------------------------------------------------------------------------
    def _resources(self) -> _LoopResources:
        # asyncio primitives and HTTP pools belong to one loop; a run may use more than one (asyncio.run per
        # phase, TRL's reward thread), so each loop gets its own. The concurrency bound is therefore per loop.
        loop = asyncio.get_running_loop()
        with self._lock:
            resources = self._per_loop.get(loop)
            if resources is None:
                price_unknown_models_at_zero([d.model for d in self._primary + self._fallbacks], self.cfg.api)
                resources = _LoopResources(asyncio.Semaphore(self.cfg.max_concurrency))
                if self.routed:
                    resources.router = build_router(self.role, self.cfg, self._primary, self._fallbacks)
                else:
                    resources.text_client = self._make_text_client()
                self._per_loop[loop] = resources
            return resources

    def _make_text_client(self) -> Any:
        """A pooled OpenAI client for the completion API, or None to let LiteLLM make its own.

        LiteLLM 1.106 builds a new HTTP session for every text completion unless given a client, leaking one
        aiohttp session (and an "Unclosed client session" error log) per call. Only done for OpenAI-compatible
        endpoints with an explicit base and key; otherwise LiteLLM's defaults (and environment keys) apply.
        """
        if self.cfg.api != "completion" or self.api_base is None or self._api_key is None:
            return None
        litellm = _litellm()
        try:
            provider = litellm.get_llm_provider(self.cfg.model)[1]
        except litellm.BadRequestError:  # an unknown provider: the call itself reports it, with the fix
            return None
        if provider not in {
            "openai",
            "text-completion-openai",
            *litellm.openai_text_completion_compatible_providers,
        }:
            return None
        import openai

        return openai.AsyncOpenAI(
            base_url=self.api_base, api_key=self._api_key, timeout=self.cfg.timeout, max_retries=0
        )

    def _count_call(self, *, ok: bool) -> None:
        with self._lock:
            self._stats.calls += 1
            self._stats.failures += not ok

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

    def usage(self, iteration: int) -> dict[str, Usage]:
        """This process's calls of one iteration, by node (from each call's metadata)."""
        with self._lock:
            return {
                node: dataclasses.replace(usage)
                for (it, node), usage in self._usage.items()
                if it == iteration
            }

    def _record(self, record: CallRecord) -> None:
        with self._lock:
            usage = self._usage.setdefault(
                (record.metadata.get("iteration"), str(record.metadata.get("node", "other"))), Usage()
            )
            usage.attempts += record.attempt > 0  # attempt 0: no request (a cache hit, or a prompt not sent)
            usage.cached += record.cached
            usage.calls += record.attempt <= 1  # a call's first attempt, or its attempt 0
            usage.prompt_tokens += record.prompt_tokens
            usage.completion_tokens += record.completion_tokens
            usage.latency_s += record.latency_s
            usage.cost_usd += record.cost_usd
            if record.error is not None:
                self._stats.errors[record.error] = self._stats.errors.get(record.error, 0) + 1
        if self.call_log is not None:
            self.call_log.write(record)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _fatal_message(self, kind: str, detail: str) -> str:
        role, cfg = self.role, self.cfg
        where = self.api_base or "the provider's default endpoint"
        fixes = {
            AUTH: f"check the API key: set `{role}.api_key_env` to the name of the environment variable "
            "that holds it (if unset, LiteLLM reads the provider's usual one, e.g. OPENAI_API_KEY)",
            NOT_FOUND: f"check `{role}.model` and `{role}.api_base`: the endpoint does not serve this model "
            "or path (a self-hosted server's api_base usually ends in /v1, and it must offer the "
            f"`{cfg.api}` API chosen by `{role}.api`)",
            BAD_REQUEST: f"LiteLLM or the endpoint refused the request; check `{role}.model` (provider "
            f"prefix), `{role}.api` ('{cfg.api}') and `{role}.max_tokens` ({cfg.max_tokens})",
        }
        what = {AUTH: "authentication", NOT_FOUND: "model or endpoint not found", BAD_REQUEST: "bad request"}
        return f"{role} ({cfg.model} at {where}): {what[kind]}: {detail}. Fix: {fixes[kind]}."


def _litellm() -> Any:
    import litellm

    # LiteLLM's first call imports the OpenAI SDK's request classes (seconds on a busy machine, holding the
    # event loop): done here, outside the timed attempt, so they do not eat every in-flight call's time limit.
    import openai.resources.chat
    import openai.resources.completions  # noqa: F401

    # Otherwise LiteLLM prints a "Give Feedback / Get Help" banner to stdout on every failed call.
    litellm.suppress_debug_info = True
    return litellm


def _last_outcome(state: RetryCallState) -> _Attempt:
    assert state.outcome is not None
    return state.outcome.result()


def _read(response: Any, api: str) -> tuple[str, str | None, int, int]:
    """Reply text, finish reason and token counts of a LiteLLM response (chat or text completion)."""
    choices = getattr(response, "choices", None) or []
    text = ""
    finish_reason = None
    if choices:
        choice = choices[0]
        finish_reason = getattr(choice, "finish_reason", None)
        text = (choice.message.content if api == "chat" else choice.text) or ""
    usage = getattr(response, "usage", None)
    return (
        text,
        finish_reason,
        int(getattr(usage, "prompt_tokens", 0) or 0),
        int(getattr(usage, "completion_tokens", 0) or 0),
    )


def _served_by(response: Any) -> str | None:
    """Which deployment answered a routed call: its model and endpoint, as the Router reports them."""
    hidden = getattr(response, "_hidden_params", None) or {}
    model = hidden.get("litellm_model_name") or getattr(response, "model", None)
    base = hidden.get("api_base")
    return f"{model} at {base}" if base else model


def _cost_of(response: Any) -> float:
    """LiteLLM's price of a response in USD from its cost map, as LiteLLM already computed it for the
    response; 0 for models it has no price for (local and self-hosted ones), never an error."""
    hidden = getattr(response, "_hidden_params", None) or {}
    if hidden.get("response_cost") is not None:
        return float(hidden["response_cost"])
    try:
        import litellm

        return float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # noqa: BLE001 - unpriced models raise; a price must never fail a judgment
        return 0.0


def _known_to_litellm(litellm: Any, model: str) -> bool:
    try:
        litellm.get_model_info(model)
    except Exception:  # noqa: BLE001 - LiteLLM raises a bare Exception for an unmapped model
        return False
    return True


_PRICED: set[str] = set()
_PRICED_LOCK = threading.Lock()


def price_unknown_models_at_zero(models: Sequence[str], api: str) -> None:
    """Enter models LiteLLM's cost map does not know (local and self-hosted ones) at zero cost.

    Their tokens then count at $0 as they should, and LiteLLM's per-response cost lookup stops searching its
    whole map (and raising) for every reply: on a 2-core machine that search was a large part of a call's CPU.
    Known models keep their price. Process-wide, as LiteLLM's cost map is.
    """
    litellm = _litellm()
    with _PRICED_LOCK:
        for model in models:
            if model in _PRICED:
                continue
            _PRICED.add(model)
            if _known_to_litellm(litellm, model):
                continue  # priced already
            try:
                provider = litellm.get_llm_provider(model)[1]
            except litellm.BadRequestError:  # an unknown provider: the call itself reports it, with the fix
                continue
            quiet = logging.getLogger("LiteLLM")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # it warns that a custom price has no cache-token prices
            try:
                litellm.register_model(
                    {
                        model: {
                            "input_cost_per_token": 0.0,
                            "output_cost_per_token": 0.0,
                            "litellm_provider": provider,
                            "mode": "chat" if api == "chat" else "completion",
                        }
                    }
                )
            finally:
                quiet.setLevel(level)


def _classify(exc: BaseException) -> str | None:
    """The error kind of an exception raised by a call, or None if it is not an endpoint failure."""
    if isinstance(exc, TimeoutError):  # our outer asyncio.wait_for
        return TIMEOUT
    import litellm
    import openai
    from litellm.types.router import RouterRateLimitError

    if isinstance(exc, RouterRateLimitError):  # every deployment is cooling down or at its rpm/tpm limit
        return RATE_LIMITED
    if isinstance(exc, litellm.ContextWindowExceededError):
        return CONTEXT_WINDOW
    if isinstance(exc, litellm.ContentPolicyViolationError):
        return CONTENT_POLICY
    if isinstance(exc, openai.APITimeoutError):  # litellm.Timeout
        return TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        return CONNECTION
    if isinstance(exc, openai.RateLimitError):
        return RATE_LIMITED
    if isinstance(exc, openai.APIError):  # LiteLLM maps every HTTP error onto these; decide by status
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return AUTH
        if status == 404:
            return NOT_FOUND
        if status == 408:
            return TIMEOUT
        if status == 429:
            return RATE_LIMITED
        if status is None or status >= 500 or status == 409:
            # LiteLLM reports a refused connection as HTTP 500; the cause chain tells them apart.
            return CONNECTION if _refused(exc) else SERVER_ERROR
        if isinstance(exc, openai.APIResponseValidationError):
            return SERVER_ERROR
        return BAD_REQUEST
    if isinstance(exc, OSError):
        return CONNECTION
    return None


def _refused(exc: BaseException) -> bool:
    """Whether the endpoint could not be reached at all (refused, DNS, reset), judged by the cause chain."""
    import httpx
    import openai

    cause = exc.__cause__ or exc.__context__
    for _ in range(10):  # the chain is short; the bound only guards against a cycle
        if cause is None or isinstance(cause, openai.APITimeoutError | httpx.TimeoutException):
            return False
        if isinstance(cause, openai.APIConnectionError | httpx.NetworkError | ConnectionError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
