"""Reading a LiteLLM response: its reply text, finish reason, token counts, and which deployment answered."""

from __future__ import annotations

from typing import Any


def read_reply(response: Any, api: str) -> tuple[str, str | None, int, int]:
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


def answered_by(response: Any) -> str | None:
    """Which deployment answered a routed call: its model and endpoint, as the Router reports them."""
    hidden = getattr(response, "_hidden_params", None) or {}
    model = hidden.get("litellm_model_name") or getattr(response, "model", None)
    base = hidden.get("api_base")
    return f"{model} at {base}" if base else model
