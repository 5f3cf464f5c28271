"""The MPO loop as a LangGraph state machine, in the steps our users name.

rollout -> score -> [after_score nodes] -> meta_analyze -> rubric_rewrite -> policy_update
   ^                                       (every `schedule.meta_every` iterations,      |
   |                                        or when an alarm asks)                        |
   +------------------------------- while iterations remain -----------------------------+

meta_analyze    prescreen -> analyze                                the meta-judge reads and critiques
rubric_rewrite  refine -> merge -> [after_rewrite nodes] -> commit  candidates, one proposal, a decision

The two meta steps are subgraphs, one node per stage of the paper's meta-reward model. `merge` leaves a
proposal; `commit` accepts, rejects or edits it by the meta-level ("meta-meta") nodes' verdicts and, with
`review`, a person's (a LangGraph interrupt). Meta-level nodes are plug-ins (config `meta_nodes`, entry point
group `mpo_agents.meta_nodes`), each a node of its own here.

With `schedule.pipeline: one_step` the judging of a batch overlaps the policy's work. In iteration t:

rollout (batch t+1) -> judge_collect (batch t) -> [after_score nodes] -> [meta step] -> judge_dispatch (batch
t+1) -> policy_update (batch t)

so the judge scores batch t+1 while the policy updates on batch t and samples batch t+2. A run starts with
rollout (batch 1) -> judge_dispatch (batch 1), and its last iteration samples and dispatches nothing. Batch t+1
is sampled before the update on batch t: it trains one policy version stale, each token weighted by its
truncated importance ratio against its stored sampling log-prob. Every batch is judged under the rubric in force when it is
dispatched, which is the rubric the synchronous loop would score it under.

With `rubric.scope: prompt` each prompt has its own buffer of items, readied before its group is judged:

rollout -> rubric_evolve -> score -> [after_score nodes] -> policy_update

`rubric_evolve` writes a prompt's persistent items the first time it is drawn and, every `schedule.meta_every`
iterations, prunes and proposes its evolved items: that is this scope's meta step, so the task-level
meta_analyze and rubric_rewrite steps are not part of its loop. After_rewrite meta-level nodes that can gate a
buffer change (`rubric_gate`) run inside `rubric_evolve`, on each prompt's change.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal

from langgraph.graph import END, START, StateGraph

from mpo_agents.config import MPOConfig
from mpo_agents.context import RunContext
from mpo_agents.errors import ConfigError
from mpo_agents.meta.schedule import knob
from mpo_agents.nodes.meta_analyze import analyze, prescreen
from mpo_agents.nodes.plugin import plugin_node
from mpo_agents.nodes.policy_update import policy_update
from mpo_agents.nodes.rollout import rollout, rollout_ahead
from mpo_agents.nodes.rubric_evolve import rubric_evolve_node
from mpo_agents.nodes.rubric_rewrite import commit, merge, refine
from mpo_agents.nodes.score import judge_collect, judge_dispatch, score
from mpo_agents.plugins import BufferGate, MetaNode, load_meta_nodes
from mpo_agents.state import MPOState

Pipeline = Literal["off", "one_step"]  # schedule.pipeline
Scope = Literal["task", "prompt"]  # rubric.scope
# The loop's subgraphs: in a stream with subgraphs=True their own update closes what their stages reported.
META_STEPS = ("meta_analyze", "rubric_rewrite")


def _meta_step_due(state: MPOState, runtime) -> bool:
    if state.get("meta_requested"):  # an alarm asked for a meta step now
        return True
    every = knob(runtime.context.config, state, "meta_every")
    return bool(every and state["iteration"] % every == 0)


def meta_due(state: MPOState, runtime) -> Literal["meta_analyze", "policy_update"]:
    return "meta_analyze" if _meta_step_due(state, runtime) else "policy_update"


def more_iterations(state: MPOState, runtime) -> Literal["rollout", "__end__"]:
    return "rollout" if state["iteration"] <= runtime.context.config.schedule.iterations else END


# --- the pipelined loop's routes (schedule.pipeline: one_step) ---
def after_rollout(state: MPOState) -> Literal["judge_dispatch", "judge_collect"]:
    """A run's first batch goes straight to the judge; later ones wait while this iteration's batch is judged."""
    return "judge_collect" if state.get("judging") else "judge_dispatch"


def after_dispatch(state: MPOState, runtime) -> Literal["rollout", "judge_collect", "policy_update"]:
    judging = state["judging"]
    if judging is not None and judging["iteration"] == state["iteration"]:  # the first batch: sample the next
        last = state["iteration"] >= runtime.context.config.schedule.iterations
        return "judge_collect" if last else "rollout"
    return "policy_update"


def after_judged(state: MPOState) -> Literal["judge_dispatch", "policy_update"]:
    """The next batch goes to the judge once this one's meta step (if any) has decided on the rubric."""
    return "judge_dispatch" if state.get("sampled") else "policy_update"


def meta_due_pipelined(
    state: MPOState, runtime
) -> Literal["meta_analyze", "judge_dispatch", "policy_update"]:
    return "meta_analyze" if _meta_step_due(state, runtime) else after_judged(state)


def more_pipelined(state: MPOState, runtime) -> Literal["rollout", "judge_collect", "__end__"]:
    iteration, last = state["iteration"], runtime.context.config.schedule.iterations
    if iteration > last:
        return END
    return "rollout" if iteration < last else "judge_collect"  # the last batch is sampled already


def _chain(steps: dict[str, Callable]) -> StateGraph:
    """A graph that runs `steps` one after the other. It shares the loop's state, so as a subgraph each step's
    update is checkpointed like any other node's (in the subgraph's own checkpoint namespace) and a resumed
    run re-enters the stage it was in."""
    graph = StateGraph(MPOState, context_schema=RunContext)
    for name, node in steps.items():
        graph.add_node(name, node)
    for before, after in itertools.pairwise([START, *steps, END]):
        graph.add_edge(before, after)
    return graph


def build_meta_analyze_graph() -> StateGraph:
    """meta_analyze: what the meta-judge reads (`prescreen`), and its critique of each case (`analyze`)."""
    return _chain({"prescreen": prescreen, "analyze": analyze})


def build_rubric_rewrite_graph(meta_nodes: Sequence[MetaNode] = ()) -> StateGraph:
    """rubric_rewrite: candidates (`refine`), one proposal (`merge`), the after_rewrite nodes' verdicts, and
    the decision (`commit`)."""
    verdicts = {node.name: plugin_node(node) for node in meta_nodes if node.stage == "after_rewrite"}
    return _chain({"refine": refine, "merge": merge, **verdicts, "commit": commit})


def build_meta_step_graph(meta_nodes: Sequence[MetaNode] = ()) -> StateGraph:
    """One meta step on its own, meta_analyze then rubric_rewrite (for tests and for driving a meta step outside
    the loop)."""
    return _chain(
        {
            "meta_analyze": build_meta_analyze_graph().compile(),
            "rubric_rewrite": build_rubric_rewrite_graph(meta_nodes).compile(),
        }
    )


def loop_graph(config: MPOConfig) -> StateGraph:
    """The loop a config describes: its meta-level nodes, its pipeline and its rubric scope."""
    return build_graph(load_meta_nodes(config.meta_nodes), config.schedule.pipeline, config.rubric.scope)


def build_graph(
    meta_nodes: Sequence[MetaNode] = (), pipeline: Pipeline = "off", scope: Scope = "task"
) -> StateGraph:
    """The loop, with the configured meta-level nodes wired in their order; `pipeline` as
    `schedule.pipeline` and `scope` as `rubric.scope` (see the module docstring). Nodes are added in the order
    they run."""
    if scope == "prompt":
        return _prompt_scope_graph(meta_nodes)
    pipelined = pipeline == "one_step"
    graph = StateGraph(MPOState, context_schema=RunContext)
    graph.add_node("rollout", rollout_ahead if pipelined else rollout)
    judged = "judge_collect" if pipelined else "score"
    graph.add_node(judged, judge_collect if pipelined else score)
    after_score = [node.name for node in meta_nodes if node.stage == "after_score"]
    for node in meta_nodes:
        if node.stage == "after_score":
            graph.add_node(node.name, plugin_node(node))
    graph.add_node("meta_analyze", build_meta_analyze_graph().compile())
    graph.add_node("rubric_rewrite", build_rubric_rewrite_graph(meta_nodes).compile())
    if pipelined:
        graph.add_node("judge_dispatch", judge_dispatch)
    graph.add_node("policy_update", policy_update)

    graph.add_edge(START, "rollout")
    for before, after in itertools.pairwise([judged, *after_score]):
        graph.add_edge(before, after)
    graph.add_edge("meta_analyze", "rubric_rewrite")
    last_judged = after_score[-1] if after_score else judged
    if pipelined:
        graph.add_conditional_edges("rollout", after_rollout)
        graph.add_conditional_edges(last_judged, meta_due_pipelined)
        graph.add_conditional_edges("rubric_rewrite", after_judged)
        graph.add_conditional_edges("judge_dispatch", after_dispatch)
        graph.add_conditional_edges("policy_update", more_pipelined)
    else:
        graph.add_edge("rollout", "score")
        graph.add_conditional_edges(last_judged, meta_due)
        graph.add_edge("rubric_rewrite", "policy_update")
        graph.add_conditional_edges("policy_update", more_iterations)
    return graph


def _prompt_scope_graph(meta_nodes: Sequence[MetaNode]) -> StateGraph:
    """rollout -> rubric_evolve -> score -> [after_score nodes] -> policy_update, while iterations remain."""
    gates = [node for node in meta_nodes if node.stage == "after_rewrite" and isinstance(node, BufferGate)]
    rewriters = [node.name for node in meta_nodes if node.stage == "after_rewrite" and node not in gates]
    if rewriters:
        raise ConfigError(
            f"meta_nodes: {', '.join(rewriters)} judge(s) a task rubric's rewrite, which rubric.scope: prompt does "
            "not make, and cannot judge a prompt's buffer (no check_buffer); drop them from meta_nodes or set "
            "rubric.scope: task"
        )
    graph = StateGraph(MPOState, context_schema=RunContext)
    steps = {"rollout": rollout, "rubric_evolve": rubric_evolve_node(gates), "score": score}
    steps |= {node.name: plugin_node(node) for node in meta_nodes if node.stage == "after_score"}
    steps["policy_update"] = policy_update
    for name, node in steps.items():
        graph.add_node(name, node)
    for before, after in itertools.pairwise([START, *steps]):
        graph.add_edge(before, after)
    graph.add_conditional_edges("policy_update", more_iterations)
    return graph
