"""Prompt files: `prompts/<task>/<role>[.<api>].md`, Jinja2 templates split into chat turns.

A prompt file is a sequence of turns introduced by lines `--- system ---`, `--- user ---` or `--- assistant ---`
(text before the first marker is a user turn). A final assistant turn is a *prefill*: the start of the answer,
which the model continues. Small local models served over `/v1/completions` follow a pattern to continue far
better than an instruction, so a role may ship a `<role>.completion.md` variant used when that role's `api` is
`completion`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from mpo_agents.bundled import PROMPTS_DIR
from mpo_agents.errors import ConfigError

DEFAULT_PROMPTS_DIR = PROMPTS_DIR
COMMON_DIR = "_common"
_TURN_MARKER = re.compile(r"^--- (system|user|assistant) ---\s*$", re.MULTILINE)
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@dataclass(frozen=True)
class RenderedPrompt:
    """Chat messages ready to send; `prefill` is the answer's given start (also the last message), if any."""

    messages: list[dict[str, str]]
    prefill: str | None = None

    def full_reply(self, reply: str) -> str:
        """The answer as a whole: the prefill followed by what the model wrote after it."""
        if not self.prefill or reply.lstrip().startswith(self.prefill.strip()):
            return reply
        return self.prefill + reply


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    path: Path
    turns: tuple[tuple[str, jinja2.Template], ...]

    def render(self, **variables: Any) -> RenderedPrompt:
        try:
            messages = [
                {"role": role, "content": template.render(**variables).strip()}
                for role, template in self.turns
            ]
        except jinja2.UndefinedError as exc:
            raise ConfigError(
                f"prompt {self.path} uses a placeholder that was not provided: {exc.message}"
            ) from exc
        # Trailing whitespace changes what a completion model writes next (a final newline makes it start a
        # new line instead of finishing ours), so every turn is stripped.
        prefill = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None
        return RenderedPrompt(messages=messages, prefill=prefill)


def _parse_turns(text: str, path: Path) -> tuple[tuple[str, jinja2.Template], ...]:
    pieces = _TURN_MARKER.split(text)
    turns: list[tuple[str, str]] = []
    if pieces[0].strip():
        turns.append(("user", pieces[0]))
    turns.extend(zip(pieces[1::2], pieces[2::2], strict=True))
    if not turns:
        raise ConfigError(f"prompt file {path} is empty")
    try:
        templates = tuple((role, _ENV.from_string(body)) for role, body in turns)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"prompt file {path} line {exc.lineno}: {exc.message}") from exc
    for _, template in templates:
        # A template's globals are a ChainMap over the environment's, which every render copies key by key
        # (three quarters of a render's time); `_ENV` never changes, so a plain dict holds the same names.
        template.globals = dict(template.globals)
    return templates


@lru_cache(maxsize=128)
def _load(path: Path) -> PromptTemplate:
    return PromptTemplate(
        name=path.stem, path=path, turns=_parse_turns(path.read_text(encoding="utf-8"), path)
    )


def prompt_path(task: str, role: str, api: str = "chat", prompts_dir: Path | None = None) -> Path:
    """Where the prompt for (task, role) lives: the task's folder, then `_common/` (prompts that differ between
    tasks only in the persona, instruction and input block they are given). In each, `<role>.<api>.md` wins
    over `<role>.md`."""
    # Looked up afresh on every call (a file added later wins from then on), with strings and os.path: a
    # judgment looks up four prompts, and pathlib made that a quarter of our judge layer's time per call.
    for folder in _folders(prompts_dir or DEFAULT_PROMPTS_DIR, task):
        for candidate in (f"{folder}{role}.{api}.md", f"{folder}{role}.md"):
            if os.path.isfile(candidate):
                return _as_path(candidate)
    root = Path(prompts_dir) if prompts_dir else DEFAULT_PROMPTS_DIR
    raise ConfigError(
        f"no prompt file for role '{role}' of task '{task}': expected {root / task / f'{role}.md'} "
        f"(set task.prompts_dir if your prompts live elsewhere)"
    )


@lru_cache(maxsize=128)
def _folders(root: Path | str, task: str) -> tuple[str, ...]:
    """The folders `prompt_path` searches, in order, each ending in a path separator."""
    folders = [Path(root) / task, Path(root) / COMMON_DIR, DEFAULT_PROMPTS_DIR / COMMON_DIR]
    return tuple(f"{folder}{os.sep}" for folder in dict.fromkeys(folders))


@lru_cache(maxsize=256)
def _as_path(candidate: str) -> Path:
    return Path(candidate)


def load_prompt(task: str, role: str, api: str = "chat", prompts_dir: Path | None = None) -> PromptTemplate:
    """The one function that reads prompt files."""
    return _load(prompt_path(task, role, api, prompts_dir))
