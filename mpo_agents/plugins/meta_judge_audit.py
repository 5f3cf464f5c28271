"""`meta_judge_audit`: an LLM (the meta-judge, or any other model set in this node's settings) reviews the
meta-judge's analyses and the rubric diff they led to: are the changes supported by the samples, do they fix
the problems the analyses name, do they open a new loophole. Its verdict goes to `commit` like any
node's (a reject keeps the parent rubric), and `rubric_gate`, placed after it, cites it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mpo_agents.judges.records import CallLog
from mpo_agents.plugins.api import Decision, MetaView
from mpo_agents.rubrics import diff_rubrics

_ANSWER = re.compile(
    r"^\W*(supported|fixes|loophole|verdict|reason)\W*:\s*(.+)$", re.IGNORECASE | re.MULTILINE
)


def parse_audit(reply: str) -> dict[str, str] | None:
    """The audit's answers by question (lower-case keys). The verdict is its "Verdict:" line, or without one
    the "Loophole:" answer (yes: reject, no: accept), which is all a small local model reliably writes.
    None when neither says."""
    answers: dict[str, str] = {}
    for key, value in _ANSWER.findall(reply):
        answers.setdefault(key.lower(), value.strip())  # the first answer counts; a small model rambles on
    verdict = _first_word(answers.get("verdict", ""))
    if verdict not in ("accept", "reject"):
        verdict = {"yes": "reject", "no": "accept"}.get(_first_word(answers.get("loophole", "")), "")
    if not verdict:
        return None
    return {**answers, "verdict": verdict}


def _first_word(text: str) -> str:
    words = text.split()
    return words[0].lower().strip(".,;:*") if words else ""


@dataclass
class MetaJudgeAudit:
    """Settings: `judge` (judge settings that differ from the meta-judge's, e.g. `{model: ..., api_base:
    ...}`; none: the meta-judge audits itself), `max_analyses` (4) and `max_samples` (4) shown to it,
    `max_tokens` (256) for its reply."""

    judge: dict[str, Any] = field(default_factory=dict)
    max_analyses: int = 4
    max_samples: int = 4
    max_tokens: int = 256
    name: str = field(default="meta_judge_audit", init=False)
    stage: ClassVar[str] = "after_rewrite"

    async def __call__(self, view: MetaView) -> Decision | None:
        if view.proposal is None:
            return None
        ctx = view.context
        client, own = self._client(view)
        directory = ctx.run_dir.meta_dir(view.iteration)
        analyses = []
        for path in sorted((directory / "analyze").glob("*.json"))[: self.max_analyses]:
            value = json.loads(path.read_text(encoding="utf-8")).get("value")
            if value:
                analyses.append(value)
        cases = (
            json.loads((directory / "cases.json").read_text()) if (directory / "cases.json").exists() else []
        )
        samples = [s for case in cases for s in case.get("samples", [])][: self.max_samples]
        prompt = ctx.prompt("meta_audit", client.cfg.api).render(
            **ctx.task.framing(),
            current_version=view.rubric.version,
            current=view.rubric.full_text(),
            proposed_version=view.proposal.version,
            proposal=view.proposal.full_text(),
            diff=diff_rubrics(view.rubric, view.proposal),
            analyses=analyses,
            samples=samples,
        )
        try:
            result = await client.complete(
                prompt.messages,
                # A completion-mode prompt ends in its first answer label: parse the reply with it.
                parse=lambda reply: parse_audit(prompt.full_reply(reply)),
                metadata={"iteration": view.iteration, "node": self.name},
                max_tokens=self.max_tokens,
            )
        finally:
            if own:
                await client.aclose()
        if not result.ok:  # no verdict: the audit abstains (metric `meta_judge_audit_abstained`) and says why
            return Decision(
                reason=f"the audit got no usable verdict ({result.error})", metrics={"abstained": 1.0}
            )
        answers = result.value
        return Decision(
            answers["verdict"],
            reason=answers.get("reason") or answers.get("loophole") or "",
            metrics={"rejected": float(answers["verdict"] == "reject")},
            details={key: answers.get(key) for key in ("supported", "fixes", "loophole")},
        )

    def _client(self, view: MetaView):
        """The meta-judge's client, or one for the model in this node's settings (its calls logged apart)."""
        from mpo_agents.judges.build import judge_client

        ctx = view.context
        if not self.judge:
            return ctx.meta_judge, False
        cfg = ctx.config.meta_judge.model_validate({**ctx.config.meta_judge.model_dump(), **self.judge})
        log = CallLog(ctx.run_dir.calls_path(self.name))
        return judge_client(self.name, cfg, os.environ, None, call_log=log, cache=None), True
