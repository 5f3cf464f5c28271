"""Several endpoints behind one judge role, through LiteLLM's Router: load balancing, rpm/tpm limits, cooldown
of failing deployments and ordered fallbacks, all from config (`judge.deployments`, `judge.fallbacks`,
`judge.routing`). Retries stay in `JudgeClient` (one retry layer); the Router only picks where a call goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpo_agents.config import JudgeConfig
from mpo_agents.judges.context_window import ContextWindow
from mpo_agents.litellm_import import import_litellm


@dataclass(frozen=True)
class Deployment:
    """One endpoint with its secrets resolved (the key never leaves this object except into LiteLLM)."""

    model: str
    api_base: str | None
    api_key: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    window: ContextWindow | None = None  # None: LiteLLM's, if it knows the model (see ContextCheck)

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"Deployment({self.model!r} at {self.api_base or 'provider default'})"


def fallback_group(role: str, number: int) -> str:
    return f"{role}-fallback-{number}"


def build_router(
    role: str, cfg: JudgeConfig, primary: Sequence[Deployment], fallbacks: Sequence[Deployment]
) -> Any:
    """A Router whose model group `role` holds the primary deployments and whose groups `<role>-fallback-N`
    hold one fallback each, tried in order after the primary group fails."""
    litellm = import_litellm()

    def entry(group: str, deployment: Deployment) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": deployment.model,
            "api_base": deployment.api_base,
            "api_key": deployment.api_key,
            "timeout": cfg.timeout,
            "max_retries": 0,  # the OpenAI SDK's own retries would hide attempts from our log and cooldown
        }
        params.update({k: v for k, v in (("rpm", deployment.rpm), ("tpm", deployment.tpm)) if v is not None})
        return {"model_name": group, "litellm_params": params}

    model_list = [entry(role, d) for d in primary]
    model_list += [entry(fallback_group(role, n), d) for n, d in enumerate(fallbacks, start=1)]
    routing = cfg.routing
    return litellm.Router(
        model_list=model_list,
        fallbacks=[{role: [fallback_group(role, n) for n in range(1, len(fallbacks) + 1)]}]
        if fallbacks
        else [],
        max_fallbacks=max(len(fallbacks), len(primary)),
        routing_strategy=routing.strategy,
        # With simple-shuffle a failed call is first re-sent to the role's other deployments, then to fallbacks.
        enable_weighted_failover=routing.strategy == "simple-shuffle" and len(primary) > 1,
        allowed_fails=routing.allowed_fails,
        cooldown_time=routing.cooldown_s,
        disable_cooldowns=routing.cooldown_s == 0,
        num_retries=0,  # JudgeClient retries (with backoff, logged); the Router must not multiply them
        retry_after=0,
        timeout=cfg.timeout,
    )


def attempt_budget(cfg: JudgeConfig, primary: int, fallbacks: int) -> int:
    """How many endpoint calls one routed attempt may chain (failover within the group, then each fallback):
    the outer stall guard of an attempt allows this many timeouts."""
    within_group = primary if cfg.routing.strategy == "simple-shuffle" and primary > 1 else 1
    return within_group + fallbacks
