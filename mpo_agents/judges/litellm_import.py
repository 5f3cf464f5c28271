"""LiteLLM, imported on first use (it takes seconds), with its "Give Feedback / Get Help" banner off."""

from __future__ import annotations

from typing import Any


def import_litellm() -> Any:
    """The `litellm` module, imported (once) with its banner off."""
    import litellm

    # Otherwise LiteLLM prints a "Give Feedback / Get Help" banner to stdout on every failed call.
    litellm.suppress_debug_info = True
    return litellm
