"""How a judge call can fail: the one place failure kinds and failed-sample statuses are spelled, and the
classification of what LiteLLM raises (and of replies that cannot be read) into those kinds."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpo_agents.litellm_import import import_litellm

if TYPE_CHECKING:
    from mpo_agents.config import JudgeConfig

# Error kinds of an attempt (`CallRecord.error`, `JudgeResult.error`). Retried: the endpoint or the model may
# do better next time.
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

# A sample's status when its judgment failed (one of `state.SampleStatus`): it has no score, the update leaves
# it out, and `mpo rejudge` sends it again. Unparseable: the judge replied, but no reply could be read (a kind
# in PARSE_FAILURES); judge failed: any other failure (endpoint errors after the retries, a prompt too long).
STATUS_JUDGE_FAILED = "judge_failed"
STATUS_UNPARSEABLE = "unparseable"
FAILED_STATUSES = (STATUS_JUDGE_FAILED, STATUS_UNPARSEABLE)


def classify(exc: BaseException) -> str | None:
    """The error kind of an exception raised by a call, or None if it is not an endpoint failure."""
    if isinstance(exc, TimeoutError):  # our outer asyncio.timeout
        return TIMEOUT
    litellm = import_litellm()
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


def parse_reply(reply: str, finish_reason: str | None, parse: Callable[[str], Any]) -> tuple[Any, str | None]:
    """What `parse` made of a reply and None, or None and the kind of a reply that could not be read: empty,
    truncated (cut off by max_tokens) or unparseable."""
    if not reply.strip():
        return None, EMPTY
    value = parse(reply)
    if value is None:
        return None, TRUNCATED if finish_reason == "length" else UNPARSEABLE
    return value, None


def fatal_message(kind: str, detail: str, *, role: str, cfg: JudgeConfig, api_base: str | None) -> str:
    """The `JudgeError` message of a FATAL kind: what failed, for which role and endpoint, and the fix."""
    where = api_base or "the provider's default endpoint"
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
