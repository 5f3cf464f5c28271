"""Judge clients built from the config: each endpoint resolved (local server, API base, key from the
environment, context window), the judge role's panel with its ensemble members, and the meta-judge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mpo_agents.config import EndpointConfig, JudgeConfig, MPOConfig
from mpo_agents.errors import ConfigError
from mpo_agents.rundir import RunDirectory

if TYPE_CHECKING:
    from mpo_agents.judges.cache import JudgmentCache
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.judges.context_window import ContextWindow
    from mpo_agents.judges.ensemble import JudgePanel
    from mpo_agents.judges.local_server import LocalServer
    from mpo_agents.judges.records import CallLog
    from mpo_agents.judges.routing import Deployment

LOCAL_SERVER_KEY = "sk-local"  # the local server checks no key; the OpenAI client insists on sending one


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
    from mpo_agents.litellm_import import import_litellm

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
    """A run's judge panel and meta-judge, sharing the run's judgment cache, each logging to its own file."""
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
