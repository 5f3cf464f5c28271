"""LiteLLM, imported on first use (it takes seconds), with the environment it reads when it is imported.

Every import of LiteLLM in mpo_agents goes through `import_litellm`, which first sets
AIOHTTP_KEEPALIVE_TIMEOUT=4 in the process environment unless it is already set (a user's own value is kept):
LiteLLM reads that variable once, at its first import, so it must be there before. Importing mpo_agents
itself changes no environment variable; the first judge call (or anything else that needs LiteLLM) does.

Right after that first import, the objects the process holds are frozen out of the garbage collector
(`gc.freeze`): LiteLLM brings some 300,000 of them (its model map above all), which every full collection
otherwise walks, holding up the event loop and every judge call in flight for about 0.2 s every few hundred
calls. Frozen objects are still freed when their last reference goes; only cycles among them are kept.

`release_litellm` stops LiteLLM's module-level logging task and closes its cached HTTP clients at the end of a
run, while its event loop still runs, so nothing of a finished run stays reachable through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from typing import Any

KEEPALIVE_VARIABLE = "AIOHTTP_KEEPALIVE_TIMEOUT"
KEEPALIVE_DEFAULT = "4"
_frozen = False  # whether the objects held after the first import have been frozen


def import_litellm() -> Any:
    """The `litellm` module, imported (once) with our default for its aiohttp keep-alive, its banner off."""
    # LiteLLM's aiohttp transport keeps idle connections for 120 s, but uvicorn-based servers (vLLM,
    # `transformers serve`, our test server) close them after 5 s: a call that picks up a connection the
    # server is closing fails with "Connection error". Read once when LiteLLM is imported, so set here,
    # before any import of it.
    os.environ.setdefault(KEEPALIVE_VARIABLE, KEEPALIVE_DEFAULT)
    import litellm

    # LiteLLM's first call imports the OpenAI SDK's request classes (seconds on a busy machine, holding the
    # event loop): done here, before any judge call is timed, so they do not eat every in-flight call's time
    # limit (the first batch of a run then timed out as a whole under load).
    import openai.resources.chat
    import openai.resources.completions  # noqa: F401

    # Otherwise LiteLLM prints a "Give Feedback / Get Help" banner to stdout on every failed call.
    litellm.suppress_debug_info = True
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()  # the garbage first: cycles among frozen objects are never freed
        gc.freeze()
    return litellm


async def release_litellm(timeout: float = 5.0) -> None:
    """At the end of a run, while its event loop still runs: let LiteLLM's logging finish (up to `timeout` s),
    stop its logging task and close the HTTP clients it cached.

    LiteLLM keeps both in module globals, created inside whichever context first used them on a loop: for us
    a graph node's, which holds the run's context and through it the policy, its optimizer and the reference
    model (~2 GB for SmolLM2-135M). Left open, an aiohttp connector's keep-alive timer (and the logging task)
    keeps that context reachable after the loop closes, so a finished run's policy was never freed and a
    second run in the same process (a notebook, a benchmark) held both. Does nothing if LiteLLM was never
    imported."""
    if "litellm" not in sys.modules:
        return
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

    with contextlib.suppress(Exception):  # a logging callback that fails or hangs must not fail the run
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout)
    await GLOBAL_LOGGING_WORKER.stop()
    await close_litellm_async_clients()
