"""What judge calls cost: a client's token, latency and price accounting, and zero prices for the models
LiteLLM has no price for."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mpo_agents.judges.records import CallRecord
from mpo_agents.litellm_import import import_litellm


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


class UsageLedger:
    """One client's accounting: calls and failures as counted, and every logged attempt (or cache hit) summed
    per (iteration, node) from its record's metadata. Safe to share between threads."""

    def __init__(self) -> None:
        self._stats = JudgeStats()
        self._usage: dict[tuple[int | None, str], Usage] = {}
        self._lock = threading.Lock()

    def count_call(self, *, ok: bool) -> None:
        with self._lock:
            self._stats.calls += 1
            self._stats.failures += not ok

    def add(self, record: CallRecord) -> None:
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

    def stats(self) -> JudgeStats:
        """A snapshot of the totals: calls, failures and errors as counted, the rest summed over the
        per-(iteration, node) usage."""
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

    def usage(self, iteration: int) -> dict[str, Usage]:
        """The usage of one iteration, by node."""
        with self._lock:
            return {
                node: dataclasses.replace(usage)
                for (it, node), usage in self._usage.items()
                if it == iteration
            }


def cost_of(response: Any) -> float:
    """LiteLLM's price of a response in USD from its cost map, as LiteLLM already computed it for the
    response; 0 for models it has no price for (local and self-hosted ones), never an error."""
    hidden = getattr(response, "_hidden_params", None) or {}
    if hidden.get("response_cost") is not None:
        return float(hidden["response_cost"])
    try:
        litellm = import_litellm()
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
    litellm = import_litellm()
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
