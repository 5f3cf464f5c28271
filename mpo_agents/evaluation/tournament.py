"""`mpo eval elo`: an LLM judge compares the systems' responses to the same prompts, pair by pair.

Differences from the official script (SPEC §4.1, §7.10), on purpose: every pair of systems meets on every shared
prompt instead of random draws; each pair is judged in both orders by default (position bias is measured, and a
split decision becomes a tie); the judge may answer "tie"; an unparseable answer is retried by the judge layer
and, if it stays unparseable, recorded as a failed verdict and left out of the ratings (never counted as a win).
Verdicts are appended to `verdicts.jsonl` as they arrive, so an interrupted tournament resumes without asking the
judge again for what it already decided.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents.errors import ConfigError
from mpo_agents.evaluation.ratings import WINNERS, rate

if TYPE_CHECKING:
    from mpo_agents.config import EloConfig
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.tasks import Task

logger = logging.getLogger(__name__)
LABELS = ("A", "B")  # what the judge calls the first and the second response: never a system's name
_TAGGED = re.compile(r"<winner>\s*(.*?)\s*</winner>", re.IGNORECASE | re.DOTALL)
_LINE = re.compile(r"winner\s*:\s*\**\s*(A|B|tie)\b", re.IGNORECASE)


def parse_winner(reply: str) -> str | None:
    """ "first", "second" or "tie" from the judge's answer (the last `<winner>` tag, else a `Winner: X` line);
    None when it named neither label, so the judge layer asks again."""
    tagged = _TAGGED.findall(reply)
    answer = tagged[-1] if tagged else None
    if answer is None:
        line = _LINE.search(reply)
        answer = line.group(1) if line else None
    if answer is None:
        return None
    answer = answer.strip().strip("*").strip()
    if answer.lower() == "tie":
        return "tie"
    if answer.upper() in LABELS:
        return WINNERS[LABELS.index(answer.upper())]
    return None


@dataclass(frozen=True)
class Judgment:
    """One judge call to make: a prompt and two systems in the order shown."""

    prompt_id: str
    first: str
    second: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.prompt_id, self.first, self.second)


def align(generations: dict[str, list[dict[str, Any]]]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The prompt ids every system answered (sorted), and each system's rows by id."""
    by_system = {system: {str(row["id"]): row for row in rows} for system, rows in generations.items()}
    shared = set.intersection(*(set(rows) for rows in by_system.values()))
    if not shared:
        raise ConfigError("the generation files share no prompt id; generate them on the same data and split")
    for system, rows in by_system.items():
        if len(rows) > len(shared):
            logger.warning(
                "%s: %d prompts not answered by every system are left out", system, len(rows) - len(shared)
            )
    return sorted(shared, key=_natural_key), by_system


def schedule(
    prompt_ids: Sequence[str], systems: Sequence[str], *, both_orders: bool, seed: int
) -> list[Judgment]:
    """Every pair on every prompt, in both orders; with one order, which system goes first is drawn at random
    per (prompt, pair) so no system is always first."""
    rng = random.Random(seed)
    judgments = []
    for prompt_id in prompt_ids:
        for a, b in itertools.combinations(systems, 2):
            if both_orders:
                judgments += [Judgment(prompt_id, a, b), Judgment(prompt_id, b, a)]
            else:
                first, second = (a, b) if rng.random() < 0.5 else (b, a)
                judgments.append(Judgment(prompt_id, first, second))
    return judgments


def read_verdicts(path: Path) -> list[dict[str, Any]]:
    """Verdicts of a tournament file; a torn last line (a kill mid-write) is skipped."""
    from mpo_agents.rundir import read_checked_jsonl

    return read_checked_jsonl(
        path,
        ("prompt_id", "first", "second", "winner"),
        "verdicts written by `mpo eval elo`",
        torn_tail_ok=True,
    )


class Tournament:
    """Judges the scheduled pairs with `judge`, appending each verdict to `verdicts_path`."""

    def __init__(
        self,
        task: Task,
        judge: JudgeClient,
        generations: dict[str, list[dict[str, Any]]],
        settings: EloConfig,
        verdicts_path: Path,
    ) -> None:
        if len(generations) < 2:
            raise ConfigError("a tournament needs at least two generation files (systems)")
        self.task = task
        self.judge = judge
        self.settings = settings
        self.systems = list(generations)
        prompt_ids, self.rows = align(generations)
        self.prompt_ids = prompt_ids[: settings.max_prompts] if settings.max_prompts else prompt_ids
        self.verdicts_path = Path(verdicts_path)
        self.prompt = task.prompt("pairwise", judge.cfg.api)
        self.criteria = task.prompt("pairwise_criteria").render().messages[0]["content"]
        self.framing = task.framing()  # the same persona and instruction for every judgment: rendered once

    def pending(self) -> tuple[list[Judgment], list[dict[str, Any]]]:
        """Judgments still to make, and the verdicts already decided in the verdicts file (failed ones are
        asked again)."""
        planned = schedule(
            self.prompt_ids, self.systems, both_orders=self.settings.both_orders, seed=self.settings.seed
        )
        done: dict[tuple[str, str, str], dict[str, Any]] = {}
        if self.verdicts_path.exists():
            for verdict in read_verdicts(self.verdicts_path):
                if verdict["winner"] in WINNERS:
                    done[(verdict["prompt_id"], verdict["first"], verdict["second"])] = verdict
        wanted = {judgment.key for judgment in planned}
        kept = [verdict for key, verdict in done.items() if key in wanted]
        return [j for j in planned if j.key not in done], kept

    def render(self, judgment: Judgment) -> Any:
        first = self.rows[judgment.first][judgment.prompt_id]
        second = self.rows[judgment.second][judgment.prompt_id]
        return self.prompt.render(
            **self.framing,
            task_input=first.get("prompt") or second.get("prompt") or "",
            criteria=self.criteria,
            label_a=LABELS[0],
            label_b=LABELS[1],
            response_a=first["response"],
            response_b=second["response"],
        )

    async def judge_one(self, judgment: Judgment) -> dict[str, Any]:
        rendered = self.render(judgment)
        result = await self.judge.complete(
            rendered.messages,
            parse=lambda reply: parse_winner(rendered.full_reply(reply)),
            metadata={"node": "elo", "prompt_id": judgment.prompt_id, "first": judgment.first},
            stop=["\n"] if self.judge.cfg.api == "completion" else None,
        )
        return {
            "prompt_id": judgment.prompt_id,
            "first": judgment.first,
            "second": judgment.second,
            "winner": result.value if result.ok else None,
            "status": "ok" if result.ok else result.error,
            "attempts": result.attempts,
            "reply": result.reply,
        }

    async def run(self, on_progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
        """Judge what is pending; returns every verdict of the tournament (earlier ones included)."""
        todo, verdicts = self.pending()
        total = len(todo) + len(verdicts)
        if on_progress:
            on_progress(len(verdicts), total)
        self.verdicts_path.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten with the decided verdicts only: failed ones from an earlier attempt are being asked again.
        from mpo_agents.rundir import write_jsonl

        write_jsonl(self.verdicts_path, verdicts)
        # A line per verdict to a local file: microseconds, next to a judge call of seconds.
        with open(self.verdicts_path, "a", encoding="utf-8") as handle:  # noqa: ASYNC230
            for next_done in asyncio.as_completed([self.judge_one(j) for j in todo]):
                verdict = await next_done
                handle.write(json.dumps(verdict, ensure_ascii=False) + "\n")
                handle.flush()
                verdicts.append(verdict)
                if on_progress:
                    on_progress(len(verdicts), total)
        return verdicts


def summarize(
    verdicts: Sequence[dict[str, Any]], systems: Sequence[str], settings: EloConfig
) -> dict[str, Any]:
    """The tournament's ratings, bias and win matrix (`rate`), in the form reports read."""
    summary = rate(
        verdicts,
        systems,
        k=settings.k,
        runs=settings.runs,
        seed=settings.seed,
        initial=settings.initial_rating,
        bootstrap=settings.bootstrap,
    )
    summary["prompts"] = len({v["prompt_id"] for v in verdicts})
    return {"kind": "elo", **summary}


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
