"""Graph nodes, one module per step of the loop: each node a small function of (state, runtime) that returns a
partial state update. Nodes never import each other; what they share lives in `mpo_agents.meta`."""
