"""The resources a run holds (policy, judge clients, task, run directory), built once and handed to every node
through LangGraph's runtime context. None of this is ever written into the graph state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpo_agents.config import JudgeConfig, MPOConfig
from mpo_agents.errors import ConfigError
from mpo_agents.prompts import PromptTemplate, load_prompt
from mpo_agents.rubrics import RubricStore
from mpo_agents.rundir import RunDirectory
from mpo_agents.tasks import Task, build_task

if TYPE_CHECKING:
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.policy.base import PolicyBackend
    from mpo_agents.serving import LocalServer

LOCAL_SERVER_KEY = "sk-local"  # the local server checks no key; the OpenAI client insists on sending one


@dataclass
class RunContext:
    config: MPOConfig
    run_dir: RunDirectory
    task: Task
    policy: PolicyBackend
    judge: JudgeClient
    meta_judge: JudgeClient
    rubrics: RubricStore

    def prompt(self, role: str, api: str = "chat") -> PromptTemplate:
        return load_prompt(self.task.name, role, api, self.task.prompts_dir)


def judge_endpoint(
    role: str, cfg: JudgeConfig, environ: Mapping[str, str], server: LocalServer | None
) -> tuple[JudgeConfig, str | None, str | None]:
    """Resolve (config, api_base, api_key) for a judge role. Keys come from the environment only."""
    if cfg.use_local_server:
        if server is None:
            raise ConfigError(f"{role}.use_local_server is set but no local server is running")
        return cfg.model_copy(update={"model": server.litellm_model}), server.url, LOCAL_SERVER_KEY
    api_key = None
    if cfg.api_key_env:
        api_key = environ.get(cfg.api_key_env)
        if not api_key:
            raise ConfigError(
                f"{role}.api_key_env names ${cfg.api_key_env}, which is not set; export it or add it to .env"
            )
    elif cfg.api_base is None:
        _check_provider_key(role, cfg.model, environ)
    return cfg, cfg.api_base, api_key


def _check_provider_key(role: str, model: str, environ: Mapping[str, str]) -> None:
    """A hosted model without a key fails on the first call, minutes into a run; fail before starting."""
    import litellm  # heavy; only needed when a hosted model is configured

    report = litellm.validate_environment(model=model)
    missing = [name for name in report.get("missing_keys", []) if not environ.get(name)]
    if missing:
        raise ConfigError(
            f"{role}.model '{model}' needs {', '.join(missing)} in the environment (or .env); "
            f"or point {role}.api_base at a self-hosted endpoint"
        )


def build_judges(
    config: MPOConfig, run_dir: RunDirectory, environ: Mapping[str, str], server: LocalServer | None
) -> tuple[JudgeClient, JudgeClient]:
    from mpo_agents.judges.cache import CACHE_FILE, JudgmentCache
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.judges.records import CallLog

    cache = JudgmentCache(run_dir.root / CACHE_FILE)  # one file for both roles: the key names the model
    clients = []
    for role in ("judge", "meta_judge"):
        cfg, api_base, api_key = judge_endpoint(role, getattr(config, role), environ, server)
        clients.append(
            JudgeClient(
                role,
                cfg,
                api_base=api_base,
                api_key=api_key,
                call_log=CallLog(run_dir.calls_path(role)),
                cache=cache,
            )
        )
    return clients[0], clients[1]


def build_context(
    config: MPOConfig, run_dir: RunDirectory, environ: Mapping[str, str], server: LocalServer | None = None
) -> RunContext:
    """Load the task, the judges and the policy (the slow part: model weights and the TRL trainer)."""
    from mpo_agents.policy import build_policy

    if config.policy.cpu_threads:
        import torch

        torch.set_num_threads(config.policy.cpu_threads)
    task = build_task(config.task)
    judge, meta_judge = build_judges(config, run_dir, environ, server)
    policy = build_policy(config.policy, config.trainer, run_dir.root / "trainer")
    return RunContext(
        config=config,
        run_dir=run_dir,
        task=task,
        policy=policy,
        judge=judge,
        meta_judge=meta_judge,
        rubrics=RubricStore(run_dir.rubrics_dir),
    )
