"""How many tokens a judge endpoint takes, and a prompt counted against it. A prompt that cannot fit is failed
before it is sent: a provider would refuse it only after a round trip, and the local server's batching worker
dies on one."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpo_agents.litellm_import import import_litellm


def prompt_of(messages: list[dict[str, str]]) -> str:
    """The one text the completion API sends for chat messages."""
    return "\n\n".join(m["content"] for m in messages)


@dataclass(frozen=True)
class ContextWindow:
    """One endpoint's context in tokens (prompt and reply together), where the number comes from (for the
    message), and what counts a prompt for it: a local model's tokenizer, or LiteLLM's counter for `model`."""

    tokens: int
    source: str
    model: str
    tokenizer_dir: Path | None = None


def litellm_window(model: str) -> ContextWindow | None:
    """LiteLLM's `max_input_tokens` for a model in its model map; None for one it does not know (self-hosted
    models: then nothing is checked)."""
    litellm = import_litellm()

    try:
        info = litellm.get_model_info(model)
    except Exception:  # noqa: BLE001 - LiteLLM raises a bare Exception for an unmapped model
        return None
    tokens = info.get("max_input_tokens")
    return ContextWindow(int(tokens), f"LiteLLM's max_input_tokens of {model}", model) if tokens else None


def local_model_window(model_dir: Path, kv_cache_tokens: int | None, model: str) -> ContextWindow | None:
    """A locally served model's context: its `max_position_embeddings`, or the server's KV cache (continuous
    batching) when that is smaller; None if neither is known."""
    limits = []
    positions = _max_position_embeddings(Path(model_dir))
    if positions:
        limits.append((positions, f"max_position_embeddings of {Path(model_dir).name}"))
    if kv_cache_tokens:
        limits.append((kv_cache_tokens, "local_server.kv_cache_tokens"))
    if not limits:
        return None
    tokens, source = min(limits)
    return ContextWindow(tokens, source, model, tokenizer_dir=tokenizer_dir(model_dir))


def tokenizer_dir(model_dir: Path) -> Path | None:
    """Where the served model's tokenizer is, or None for a server whose model is no local directory (its
    prompts are then counted by LiteLLM)."""
    return Path(model_dir) if (Path(model_dir) / "tokenizer_config.json").is_file() else None


def _max_position_embeddings(model_dir: Path) -> int | None:
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    value = config.get("max_position_embeddings") or (config.get("text_config") or {}).get(
        "max_position_embeddings"
    )
    return int(value) if value else None


class ContextCheck:
    """A role's endpoints' contexts and each prompt counted against them; the smallest that a prompt and its
    reply overflow refuses it. Endpoints without a configured or local window are looked up in LiteLLM's model
    map once, on the first call; a model it does not know is not checked."""

    def __init__(self, endpoints: Sequence[tuple[str, ContextWindow | None]]) -> None:
        self._endpoints = list(endpoints)  # (LiteLLM model, its window if known without LiteLLM)
        self._windows: list[ContextWindow] | None = None
        self._counter = TokenCounter()

    def refusal(self, messages: list[dict[str, str]], api: str, max_tokens: int) -> str | None:
        """Why this request cannot fit (the message of the failed judgment), or None."""
        if self._windows is None:
            windows = [window or litellm_window(model) for model, window in self._endpoints]
            self._windows = sorted((w for w in windows if w is not None), key=lambda w: w.tokens)
        if not self._windows:
            return None
        prompt = None if api == "chat" else prompt_of(messages)
        for window in self._windows:
            tokens = self._counter.count(window, messages, prompt)
            if tokens + max_tokens > window.tokens:
                return (
                    f"prompt of {tokens} tokens + max_tokens {max_tokens} exceeds the judge's context of "
                    f"{window.tokens} tokens ({window.source}); not sent"
                )
        return None


class TokenCounter:
    """Counts a request's prompt tokens as an endpoint will: through the local model's chat template and
    tokenizer (each loaded once, on first use), or with LiteLLM's `token_counter` for a hosted model."""

    def __init__(self) -> None:
        self._tokenizers: dict[Path, Any] = {}
        # A fast tokenizer used from two threads at once can fail ("Already borrowed"); a client may serve
        # several event loops in several threads.
        self._lock = threading.Lock()

    def count(self, window: ContextWindow, messages: list[dict[str, str]], prompt: str | None) -> int:
        """Tokens of the chat `messages`, or of the completion API's `prompt` when it is given."""
        if window.tokenizer_dir is None:
            litellm = import_litellm()

            if prompt is None:
                return int(litellm.token_counter(model=window.model, messages=messages))
            return int(litellm.token_counter(model=window.model, text=prompt))
        with self._lock:
            tokenizer = self._tokenizer(window.tokenizer_dir)
            if prompt is None and tokenizer.chat_template:
                encoded = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=True
                )
                return len(encoded["input_ids"])
            return len(tokenizer(prompt if prompt is not None else prompt_of(messages))["input_ids"])

    def _tokenizer(self, directory: Path) -> Any:
        if directory not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[directory] = AutoTokenizer.from_pretrained(str(directory))
        return self._tokenizers[directory]
