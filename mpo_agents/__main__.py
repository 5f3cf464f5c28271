"""`python -m mpo_agents`: the `mpo` command."""

from mpo_agents.cli import app

app()
