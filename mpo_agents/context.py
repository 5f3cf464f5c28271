"""The resources a run holds (policy, judge clients, task, run directory), built once and handed to every node
through LangGraph's runtime context. None of this is ever written into the graph state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpo_agents.config import EndpointConfig, JudgeConfig, MPOConfig
from mpo_agents.errors import ConfigError
from mpo_agents.prompts import PromptTemplate, load_prompt
from mpo_agents.rubrics import RubricStore
from mpo_agents.rundir import RunDirectory
from mpo_agents.tasks import Task, build_task
from mpo_agents.tasks.data import PromptBudget

if TYPE_CHECKING:
    from mpo_agents.judges.cache import JudgmentCache
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.judges.context_window import ContextWindow
    from mpo_agents.judges.ensemble import JudgePanel
    from mpo_agents.judges.records import CallLog
    from mpo_agents.judges.routing import Deployment
    from mpo_agents.policy.base import PolicyBackend
    from mpo_agents.policy.grpo import TRLGRPOPolicy
    from mpo_agents.serving import LocalServer

LOCAL_SERVER_KEY = "sk-local"  # the local server checks no key; the OpenAI client insists on sending one


@dataclass
class RunContext:
    config: MPOConfig
    run_dir: RunDirectory
    task: Task
    policy: PolicyBackend
    judge: JudgePanel  # one client, or an ensemble's members
    meta_judge: JudgeClient
    rubrics: RubricStore
    server: LocalServer | None = None  # the local judge server, when the config starts one

    def check_server(self) -> None:
        """Raise ServerError if the local judge server has stopped serving for good (its restarts used up)."""
        if self.server is not None:
            self.server.check()

    def prompt(self, role: str, api: str = "chat") -> PromptTemplate:
        return load_prompt(self.task.name, role, api, self.task.prompts_dir)


def resolve_endpoint(
    where: str,
    endpoint: JudgeConfig | EndpointConfig,
    environ: Mapping[str, str],
    server: LocalServer | None,
) -> Deployment:
    """Where one endpoint of a judge role is served (`where` names it in errors, e.g. `judge.fallbacks[0]`),
    and its context window where the config or the local server tells it. Keys come from the environment only."""
    from mpo_agents.judges.context_window import ContextWindow
    from mpo_agents.judges.routing import Deployment

    if endpoint.use_local_server:
        if server is None:
            raise ConfigError(f"{where}.use_local_server is set but no local server is running")
        window = local_server_window(where, endpoint, server)
        return Deployment(
            server.litellm_model, server.url, LOCAL_SERVER_KEY, endpoint.rpm, endpoint.tpm, window=window
        )
    api_key = None
    if endpoint.api_key_env:
        api_key = environ.get(endpoint.api_key_env)
        if not api_key:
            raise ConfigError(
                f"{where}.api_key_env names ${endpoint.api_key_env}, which is not set; export it or add it to .env"
            )
    elif endpoint.api_base is None:
        _check_provider_key(where, endpoint.model, environ)
    window = None  # the client asks LiteLLM on its first call
    if endpoint.context_tokens:
        window = ContextWindow(endpoint.context_tokens, f"{where}.context_tokens", endpoint.model)
    return Deployment(endpoint.model, endpoint.api_base, api_key, endpoint.rpm, endpoint.tpm, window=window)


def local_server_window(
    where: str, endpoint: JudgeConfig | EndpointConfig, server: LocalServer
) -> ContextWindow | None:
    """The local server's context for one endpoint, counted with the served model's tokenizer: the configured
    `context_tokens`, else the model's positions or the server's KV cache, whichever is smaller."""
    from mpo_agents.judges.context_window import ContextWindow, local_model_window, tokenizer_dir

    if endpoint.context_tokens:
        source = f"{where}.context_tokens"
        tokenizer = tokenizer_dir(server.model_dir)
        return ContextWindow(endpoint.context_tokens, source, server.litellm_model, tokenizer)
    return local_model_window(server.model_dir, server.kv_cache_tokens, server.litellm_model)


def judge_client(
    role: str,
    cfg: JudgeConfig,
    environ: Mapping[str, str],
    server: LocalServer | None,
    *,
    call_log: CallLog | None,
    cache: JudgmentCache | None,
    where: str | None = None,
) -> JudgeClient:
    """The client of one judge model with its deployments and fallbacks resolved."""
    from mpo_agents.judges.client import JudgeClient

    where = where or role
    primary = resolve_endpoint(where, cfg, environ, server)
    local = any(e.use_local_server for e in (cfg, *cfg.deployments, *cfg.fallbacks))
    return JudgeClient(
        role,
        cfg.model_copy(update={"model": primary.model}),
        api_base=primary.api_base,
        api_key=primary.api_key,
        call_log=call_log,
        cache=cache,
        deployments=[
            resolve_endpoint(f"{where}.deployments[{n}]", d, environ, server)
            for n, d in enumerate(cfg.deployments)
        ],
        fallbacks=[
            resolve_endpoint(f"{where}.fallbacks[{n}]", f, environ, server)
            for n, f in enumerate(cfg.fallbacks)
        ],
        context_window=primary.window,
        on_endpoint_error=server.recovered if local and server is not None else None,
    )


def judge_panel(
    config: MPOConfig,
    environ: Mapping[str, str],
    server: LocalServer | None,
    *,
    call_log: CallLog | None,
    cache: JudgmentCache | None,
) -> JudgePanel:
    """The judge role's clients: its own model, then each ensemble member (sharing the role's log and cache)."""
    from mpo_agents.judges.ensemble import JudgePanel

    cfg = config.judge
    members = tuple(
        judge_client(
            "judge",
            member,
            environ,
            server,
            call_log=call_log,
            cache=cache,
            where="judge" if number == 0 else f"judge.ensemble.members[{number - 1}]",
        )
        for number, member in enumerate(cfg.member_configs())
    )
    return JudgePanel(members, aggregate=cfg.ensemble.aggregate, quorum=cfg.quorum)


def _check_provider_key(role: str, model: str, environ: Mapping[str, str]) -> None:
    """A hosted model without a key fails on the first call, minutes into a run; fail before starting."""
    from mpo_agents.judges.litellm_import import import_litellm

    litellm = import_litellm()  # heavy; only needed when a hosted model is configured
    report = litellm.validate_environment(model=model)
    missing = [name for name in report.get("missing_keys", []) if not environ.get(name)]
    if missing:
        raise ConfigError(
            f"{role}.model '{model}' needs {', '.join(missing)} in the environment (or .env); "
            f"or point {role}.api_base at a self-hosted endpoint"
        )


def build_judges(
    config: MPOConfig, run_dir: RunDirectory, environ: Mapping[str, str], server: LocalServer | None
) -> tuple[JudgePanel, JudgeClient]:
    from mpo_agents.judges.cache import CACHE_FILE, JudgmentCache
    from mpo_agents.judges.records import CallLog

    cache = JudgmentCache(run_dir.root / CACHE_FILE)  # one file for both roles: the key names the model
    judge = judge_panel(config, environ, server, call_log=CallLog(run_dir.calls_path("judge")), cache=cache)
    meta_judge = judge_client(
        "meta_judge",
        config.meta_judge,
        environ,
        server,
        call_log=CallLog(run_dir.calls_path("meta_judge")),
        cache=cache,
    )
    return judge, meta_judge


def build_run_policy(config: MPOConfig, run_dir: RunDirectory) -> TRLGRPOPolicy:
    """The run's policy (every process of a multi-process run builds one the same way): torch threads, then the
    model and its TRL trainer. A resumed run's newest checkpoint decides LoRA under `policy.lora.enabled: auto`."""
    from mpo_agents.policy import build_policy, latest_checkpoint

    if config.policy.cpu_threads:
        import torch

        torch.set_num_threads(config.policy.cpu_threads)
    return build_policy(
        config.policy,
        config.trainer,
        run_dir.root / "trainer",
        run_dir.tensorboard_dir,
        resume_from=latest_checkpoint(run_dir.policy_dir),
    )


def build_run_task(config: MPOConfig) -> Task:
    """The run's task, its data read and checked and its prompts measured as the policy will see them (only the
    policy's tokenizer loads, not its model), so that bad data fails before anything heavy starts."""
    from mpo_agents.policy.tokens import PromptMeter

    budget = PromptBudget(config.trainer.max_prompt_length, PromptMeter(config.policy.model))
    return build_task(config.task, prompt_budget=budget)


def build_context(
    config: MPOConfig,
    run_dir: RunDirectory,
    environ: Mapping[str, str],
    task: Task,
    server: LocalServer | None = None,
) -> RunContext:
    """The judges and the policy (the slow part: model weights and the TRL trainer) around the task that
    `build_run_task` built and checked."""
    judge, meta_judge = build_judges(config, run_dir, environ, server)
    policy = build_run_policy(config, run_dir)
    return RunContext(
        config=config,
        run_dir=run_dir,
        task=task,
        policy=policy,
        judge=judge,
        meta_judge=meta_judge,
        rubrics=RubricStore(run_dir.rubrics_dir),
        server=server,
    )
