"""mpo-agents: Meta Policy Optimization as a LangGraph state machine."""

import os

# LiteLLM's aiohttp transport keeps idle connections for 120 s, but uvicorn-based servers (vLLM, `transformers
# serve`, our test server) close them after 5 s: a call that picks up a connection the server is closing fails
# with "Connection error". Read once when LiteLLM is imported, so set here, before any import of it.
os.environ.setdefault("AIOHTTP_KEEPALIVE_TIMEOUT", "4")
