"""The graph as LangGraph Studio loads it (`langgraph dev`, see langgraph.json): the loop with the meta-level
nodes of the config named by $MPO_CONFIG (default: examples/quickstart.yaml), compiled without a
checkpointer (Studio brings its own). It is for inspecting the structure; a run needs the policy, judges and
run directory that `mpo run` builds into its context.
"""

from __future__ import annotations

import os
from pathlib import Path

from mpo_agents.config import load_config
from mpo_agents.graphs.mpo import loop_graph

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"

config = load_config(Path(os.environ.get("MPO_CONFIG", DEFAULT_CONFIG)))
graph = loop_graph(config).compile()
