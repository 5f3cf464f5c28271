from mpo_agents.cli import app

app()
