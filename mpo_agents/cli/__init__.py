"""`mpo`: run, resume and inspect MPO runs. Thin: parses arguments, shows progress, calls the runner.

This module is the command table; the commands live by group in the modules beside it. Heavy libraries
(torch, trl, litellm, langgraph) are imported inside the commands, so `mpo --help` is instant.
"""

from __future__ import annotations

import typer

from mpo_agents.cli import evaluate, inspection, judging, run

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Meta Policy Optimization: GRPO with an evolving LLM-judge rubric.",
)
app.command()(run.run)
app.command()(run.resume)
app.command()(run.review)
app.command()(inspection.graph)
app.command()(inspection.config)
app.command()(inspection.rubrics)
app.command()(run.check)
app.command("hacking-check")(judging.hacking_check)
app.command()(judging.score)
app.command()(judging.rejudge)
app.command()(evaluate.generate)
app.command()(evaluate.report)

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate generations: an Elo tournament, ROUGE, accuracy.")
eval_app.command("elo")(evaluate.eval_elo)
eval_app.command("rouge")(evaluate.eval_rouge)
eval_app.command("accuracy")(evaluate.eval_accuracy)
app.add_typer(eval_app, name="eval")

if __name__ == "__main__":
    app()
