"""A judge role's connections, one set per event loop (its concurrency gate and pooled HTTP clients), and the
request an attempt sends through them."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mpo_agents.judges.context_window import prompt_of
from mpo_agents.judges.routing import Deployment, build_router
from mpo_agents.judges.usage import price_unknown_models_at_zero
from mpo_agents.litellm_import import import_litellm

if TYPE_CHECKING:
    from mpo_agents.config import JudgeConfig


@dataclass
class LoopResources:
    """What must belong to one event loop: the concurrency gate and the pooled HTTP clients."""

    semaphore: asyncio.Semaphore
    text_client: Any = None  # openai.AsyncOpenAI for the completion API, see `LoopPools._make_text_client`
    router: Any = None  # litellm.Router of a routed role (it pools a client per deployment)


class LoopPools:
    """One role's `LoopResources` per event loop, made on the loop's first call.

    asyncio primitives and HTTP pools belong to one loop; a run may use more than one (asyncio.run per phase,
    TRL's reward thread), so each loop gets its own. The concurrency bound is therefore per loop.
    """

    def __init__(
        self,
        role: str,
        cfg: JudgeConfig,
        *,
        api_base: str | None,
        api_key: str | None,
        primary: Sequence[Deployment],
        fallbacks: Sequence[Deployment],
        routed: bool,
    ) -> None:
        self.role = role
        self.cfg = cfg
        self.api_base = api_base
        self._api_key = api_key  # passed to LiteLLM and the OpenAI client only; never logged
        self._primary = list(primary)
        self._fallbacks = list(fallbacks)
        self.routed = routed
        self._lock = threading.Lock()
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopResources] = (
            weakref.WeakKeyDictionary()
        )

    def current(self) -> LoopResources:
        """The running loop's resources; the first call of the process imports LiteLLM (seconds)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            resources = self._per_loop.get(loop)
            if resources is None:
                price_unknown_models_at_zero([d.model for d in self._primary + self._fallbacks], self.cfg.api)
                resources = LoopResources(asyncio.Semaphore(self.cfg.max_concurrency))
                if self.routed:
                    resources.router = build_router(self.role, self.cfg, self._primary, self._fallbacks)
                else:
                    resources.text_client = self._make_text_client()
                self._per_loop[loop] = resources
            return resources

    async def send(
        self,
        resources: LoopResources,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int,
        stop: list[str] | None,
    ) -> Any:
        """One request through the running loop's `resources`: LiteLLM's response, or what it raised."""
        litellm = import_litellm()
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        if stop:
            params["stop"] = stop
        if resources.router is not None:  # the Router holds each deployment's model, endpoint and key
            if self.cfg.api == "chat":
                return await resources.router.acompletion(model=self.role, messages=messages, **params)
            return await resources.router.atext_completion(
                model=self.role, prompt=prompt_of(messages), **params
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
            return await litellm.acompletion(messages=messages, **params)
        if resources.text_client is not None:
            params["client"] = resources.text_client
        return await litellm.atext_completion(prompt=prompt_of(messages), **params)

    async def close_current(self) -> None:
        """Close the pooled connections opened on the running event loop."""
        resources = self._per_loop.pop(asyncio.get_running_loop(), None)
        if resources is not None and resources.text_client is not None:
            await resources.text_client.close()
        if resources is not None and resources.router is not None:
            resources.router.discard()  # unhooks its callbacks from LiteLLM's process-wide lists

    def _make_text_client(self) -> Any:
        """A pooled OpenAI client for the completion API, or None to let LiteLLM make its own.

        LiteLLM 1.106 builds a new HTTP session for every text completion unless given a client, leaking one
        aiohttp session (and an "Unclosed client session" error log) per call. Only done for OpenAI-compatible
        endpoints with an explicit base and key; otherwise LiteLLM's defaults (and environment keys) apply.
        """
        if self.cfg.api != "completion" or self.api_base is None or self._api_key is None:
            return None
        litellm = import_litellm()
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
