"""mpo-agents: Meta Policy Optimization as a LangGraph state machine."""
