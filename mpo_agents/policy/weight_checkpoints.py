"""Atomic policy checkpoints: weights, optimizer, LR scheduler, step and RNG states, all or nothing.

Layout of `<root>/iter-000007/`:
  model/                 full fine-tuning: `save_pretrained` output (safetensors + config + tokenizer),
                         loadable on its own
  adapter/               LoRA mode (`policy.lora.enabled`) instead of model/: the PEFT adapter only
                         (`adapter_model.safetensors` + `adapter_config.json`, plus the tokenizer); the base
                         weights are never written, they come from `policy.model` again on resume
  optimizer.safetensors  optimizer state tensors (`state.<param index>.<name>`) and torch RNG states (`rng.*`;
                         another process's of a multi-process run: `process.<rank>.rng.*`)
  deepspeed/             DeepSpeed ZeRO runs only, instead of the optimizer tensors: the engine's own checkpoint
                         (each process's optimizer partition; DeepSpeed's torch.save format)
  state.json             step, optimizer param groups, scheduler state, Python/NumPy RNG states, and `lora`:
                         the adapter's shape (r, alpha, target modules) or null for a full checkpoint
  value/                 PPO runs only (`trainer.algorithm: ppo`): the value model's trainable weights
                         (weights.safetensors), its optimizer's tensors (optimizer.safetensors) and param groups
                         (state.json)
  COMPLETE               written last; a directory without it is never read. JSON: the step, and the size and
                         xxHash-64 of every other file, so a load can tell a damaged checkpoint from a good one

Everything is written into `iter-000007.tmp`, fsynced, marked COMPLETE and renamed into place, so a process
killed mid-save leaves at most a `.tmp` directory that `latest_checkpoint` ignores. A checkpoint damaged after
the fact (a truncated file, a bad disk block) fails `verify_checkpoint`; `usable_checkpoint` then names it and
falls back to the newest one that verifies, and `quarantine` moves it aside as `iter-000007.damaged`. No pickle is involved
(except in DeepSpeed's own files): tensors go to safetensors, the rest to JSON. For the 1.08 GB of Adam moments of SmolLM2-135M, safetensors wrote
as fast as `torch.save` (4.2 s vs 4.6 s incl. fsync, busy disk) and loads ~10x faster (0.05 s vs 0.57 s, mmap).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents.errors import CheckpointError
from mpo_agents.rundir import writing

if TYPE_CHECKING:
    from mpo_agents.policy.base import TrainerState

COMPLETE_MARKER = "COMPLETE"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
TENSORS_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
FORMAT_VERSION = 1
DEEPSPEED_DIR = (
    "deepspeed"  # DeepSpeed ZeRO runs: the engine's own checkpoint (optimizer partitions per process)
)
DEEPSPEED_TAG = "state"
VALUE_DIR = (
    "value"  # PPO runs: the value model's trainable weights and its optimizer (same file names inside)
)
VALUE_WEIGHTS = "weights.safetensors"
RANK_PREFIX = "process."  # tensors of another process of a multi-process run: `process.<rank>.rng.torch`
_NAME = re.compile(r"^iter-(\d+)$")
DAMAGED_SUFFIX = ".damaged"
_HASH = "xxh64"  # damage detection, not security: 8 GB/s here, where SHA-256 does 1.6
_CHUNK = 8 << 20


def checkpoint_dir(root: Path, index: int) -> Path:
    """Where checkpoint number `index` lives under `root` (`iter-000007`). The MPO loop numbers checkpoints by
    iteration, not optimizer step: an iteration whose judgments all failed saves without stepping."""
    return Path(root) / f"iter-{index:06d}"


def save_checkpoint(
    policy: TrainerState,
    directory: Path,
    process_rng: dict[int, dict[str, Any]] | None = None,
    rank: int = 0,
    barrier: Callable[[], None] | None = None,
) -> None:
    """Write a complete checkpoint of `policy` to `directory` atomically (replacing an existing one).

    Multi-process runs: `process_rng` holds the torch RNG states of the other processes, by rank (each draws
    its own dropout masks), restored by `load_checkpoint(..., rank=r)`. Under DeepSpeed ZeRO every process
    calls this (`rank`, and a `barrier` over all processes): each writes its optimizer partition with
    DeepSpeed's own `save_checkpoint` into the staging directory, then process 0 writes the rest, marks it
    COMPLETE and moves it into place. Otherwise only process 0 calls it."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".tmp")
    if rank == 0:
        if staging.exists():  # left by a killed save
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    if is_deepspeed(policy):
        if barrier is not None:
            barrier()  # the staging directory exists for everyone
        # Collective: every process writes its own partition of the optimizer state (DeepSpeed's format).
        policy.trainer.model_wrapped.save_checkpoint(
            str(staging / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, exclude_frozen_parameters=policy.is_lora
        )
    if rank != 0:
        return
    with writing(staging):
        _write_contents(policy, staging, process_rng or {})
        _fsync_tree(staging)
        marker = {"step": policy.step, "files": _manifest(staging)}
        _write_synced(staging / COMPLETE_MARKER, json.dumps(marker))
        _fsync_dir(staging)
        _swap_into_place(staging, directory)


def _write_contents(policy: TrainerState, staging: Path, process_rng: dict[int, dict[str, Any]]) -> None:
    from safetensors.torch import save_file

    from mpo_agents.policy.models import quiet_progress_bars

    trainer = policy.trainer
    weights_dir = staging / (ADAPTER_DIR if policy.is_lora else MODEL_DIR)
    with quiet_progress_bars():
        # On a PEFT model this writes only the adapter (safetensors), never the base weights.
        policy.model.save_pretrained(weights_dir)
    policy.tokenizer.save_pretrained(weights_dir)
    # Under DeepSpeed the optimizer state is partitioned across processes and lives in deepspeed/ instead.
    optimizer_state = (
        {"state": {}, "param_groups": None} if is_deepspeed(policy) else trainer.optimizer.state_dict()
    )
    tensors = _flat_optimizer_state(optimizer_state)
    tensors.update(torch_rng_states())
    for rank, states in process_rng.items():
        tensors.update({f"{RANK_PREFIX}{rank}.{name}": value for name, value in states.items()})
    save_file(tensors, str(staging / TENSORS_FILE))
    state = {
        "format_version": FORMAT_VERSION,
        "lora": _lora_shape(policy),
        "global_step": policy.step,
        "num_input_tokens_seen": int(trainer.state.num_input_tokens_seen),
        "param_groups": optimizer_state["param_groups"],
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "python_rng": _python_rng_state(),
        "numpy_rng": _numpy_rng_state(),
    }
    try:
        text = json.dumps(state)
    except TypeError as exc:  # a scheduler/optimizer with non-JSON state: fail now, not at resume time
        raise CheckpointError(
            f"policy state is not JSON-serialisable ({exc}); checkpoint format needs updating"
        ) from exc
    (staging / STATE_FILE).write_text(text)
    if getattr(policy, "value", None) is not None:
        _write_value(policy, staging / VALUE_DIR)


def _flat_optimizer_state(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's per-parameter tensors as flat safetensors entries, `state.<param index>.<name>`."""
    return {
        f"state.{index}.{name}": value.detach().cpu().contiguous()
        for index, param_state in optimizer_state["state"].items()
        for name, value in param_state.items()
    }


def _write_value(policy: Any, directory: Path) -> None:
    """PPO's value model: its trainable weights (all of them, or the LoRA adapter and the head), its optimizer's
    tensors and param groups."""
    from safetensors.torch import save_file

    directory.mkdir()
    trainable = {name for name, p in policy.value.named_parameters() if p.requires_grad}
    weights = {
        n: t.detach().cpu().contiguous() for n, t in policy.value.state_dict().items() if n in trainable
    }
    save_file(weights, str(directory / VALUE_WEIGHTS))
    state = policy.value_optimizer.state_dict()
    save_file(_flat_optimizer_state(state), str(directory / TENSORS_FILE))
    (directory / STATE_FILE).write_text(json.dumps({"param_groups": state["param_groups"]}))


def _load_value(policy: Any, directory: Path) -> None:
    """Restore what `_write_value` wrote into the live value model and its optimizer, in place."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(directory / VALUE_WEIGHTS))
    parameters = {name: p for name, p in policy.value.named_parameters() if p.requires_grad}
    if set(weights) != set(parameters):
        raise CheckpointError(
            f"{directory} holds a value model of another shape ({len(weights)} trainable tensors; this run trains "
            f"{len(parameters)}): trainer.ppo.value_lora or value_model changed since it was written"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    groups = json.loads((directory / STATE_FILE).read_text())["param_groups"]
    tensors = load_file(str(directory / TENSORS_FILE))
    policy.value_optimizer.load_state_dict({"state": _optimizer_tensors(tensors), "param_groups": groups})


def is_deepspeed(policy: TrainerState) -> bool:
    """Whether accelerate runs the policy's trainer under DeepSpeed (ZeRO stage 1 or 2)."""
    return bool(getattr(policy.trainer, "is_deepspeed_enabled", False))


def _swap_into_place(staging: Path, directory: Path) -> None:
    """Rename `staging` to `directory`. An existing `directory` (same step saved again after a resume) is moved
    aside first, because a directory cannot be renamed over a non-empty one."""
    previous = directory.with_name(directory.name + ".old")
    if previous.exists():
        shutil.rmtree(previous)
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    _fsync_dir(directory.parent)
    if previous.exists():
        shutil.rmtree(previous)


def load_checkpoint(policy: TrainerState, directory: Path, rank: int = 0, verify: bool = True) -> None:
    """Restore weights (or the LoRA adapter), optimizer, scheduler, step and RNG states written by
    `save_checkpoint`. Process `rank` of a multi-process run takes its own saved torch RNG state; one the
    checkpoint does not hold (more processes than when it was written) keeps its current state.

    Load into a policy built from the BASE model (see `TRLGRPOPolicy`), so TRL's KL reference stays the
    initial policy. A LoRA checkpoint loads only into a LoRA policy with the same adapter shape, a full one
    only into a full fine-tuning policy (CheckpointError otherwise). Its files are checked against the marker
    first (`verify_checkpoint`), unless the caller has just done so."""
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / COMPLETE_MARKER).is_file():
        raise CheckpointError(
            f"{directory} is not a complete policy checkpoint (no {COMPLETE_MARKER} marker)"
        )
    problems = verify_checkpoint(directory) if verify else []
    if problems:
        raise CheckpointError(f"{directory} is damaged: {'; '.join(problems)}")
    state = json.loads((directory / STATE_FILE).read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {state.get('format_version')} != {FORMAT_VERSION}"
        )
    _check_kind(policy, state.get("lora"), directory)
    holds_value = (directory / VALUE_DIR).is_dir()
    if holds_value != (getattr(policy, "value", None) is not None):  # refused before anything is loaded
        raise CheckpointError(
            f"{directory} was written by a {'PPO' if holds_value else 'GRPO or RLOO'} run and this policy "
            f"{'has no' if holds_value else 'needs a'} value model; resume it with the trainer.algorithm it was "
            "started with"
        )
    written_by_deepspeed = (directory / DEEPSPEED_DIR).is_dir()
    if written_by_deepspeed != is_deepspeed(policy):
        raise CheckpointError(
            f"{directory} was written {'under' if written_by_deepspeed else 'without'} DeepSpeed ZeRO (its "
            "optimizer state is partitioned differently); resume it with the accelerate config it was started "
            "with"
        )
    trainer = policy.trainer
    tensors = load_file(str(directory / TENSORS_FILE))
    if written_by_deepspeed:
        # Every process restores the weights and its own optimizer partition (ZeRO keeps fp32 master copies
        # there, so loading weights alone would be undone by the next step).
        trainer.model_wrapped.load_checkpoint(
            str(directory / DEEPSPEED_DIR),
            tag=DEEPSPEED_TAG,
            load_module_strict=not policy.is_lora,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,  # ours is in state.json
        )
    else:
        if policy.is_lora:
            _load_adapter(policy.model, directory / ADAPTER_DIR)
        else:
            _load_weights(policy.model, directory / MODEL_DIR)
        trainer.optimizer.load_state_dict(
            {"state": _optimizer_tensors(tensors), "param_groups": state["param_groups"]}
        )
    if holds_value:
        _load_value(policy, directory / VALUE_DIR)
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    trainer.state.global_step = int(state["global_step"])
    trainer.state.num_input_tokens_seen = int(state["num_input_tokens_seen"])
    random.setstate(_as_python_rng_state(state["python_rng"]))
    _set_numpy_rng_state(state["numpy_rng"])
    prefix = "rng." if rank == 0 else f"{RANK_PREFIX}{rank}.rng."
    if f"{prefix}torch" not in tensors:
        return
    torch.set_rng_state(tensors[f"{prefix}torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith(f"{prefix}cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)


def _load_weights(model: Any, model_dir: Path) -> None:
    """Copy saved weights into the live model in place (optimizer and TRL hold references to its parameters)."""
    import torch
    from safetensors.torch import load_file

    saved: dict[str, Any] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        saved.update(load_file(str(shard)))
    live = model.state_dict()
    unexpected = sorted(set(saved) - set(live))
    # `save_pretrained` drops tied copies (lm_head.weight tied to the embeddings): those share storage with a
    # saved tensor and are restored with it.
    saved_storage = {live[name].data_ptr() for name in saved if name in live}
    missing = sorted(name for name in set(live) - set(saved) if live[name].data_ptr() not in saved_storage)
    if unexpected or missing:
        raise CheckpointError(
            f"{model_dir} does not match the policy model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "was it saved from a different base model?"
        )
    with torch.no_grad():
        for name, value in saved.items():
            live[name].copy_(value)


def _lora_shape(policy: TrainerState) -> dict[str, Any] | None:
    """What makes an adapter loadable into another: None for full fine-tuning. (Dropout is left out: it does
    not change the adapter's function, so it may differ on resume.)"""
    if policy.lora is None:
        return None
    target = policy.lora.target_modules
    return {
        "r": policy.lora.r,
        "alpha": policy.lora.alpha,
        "target_modules": target if isinstance(target, str) else sorted(target),
    }


def _check_kind(policy: TrainerState, saved: dict[str, Any] | None, directory: Path) -> None:
    """Refuse a LoRA checkpoint in a full fine-tuning config and the reverse (checkpoints written before LoRA
    existed have no `lora` entry: full), and an adapter of another shape."""
    saved_lora = saved is not None
    if saved_lora != policy.is_lora:
        holds = "a LoRA adapter" if saved_lora else "full model weights"
        raise CheckpointError(
            f"{directory} holds {holds} (written with policy.lora.enabled={str(saved_lora).lower()}) but "
            f"this run has policy.lora.enabled={str(policy.is_lora).lower()}; set policy.lora.enabled to "
            "match the checkpoint, or start a new run"
        )
    current = _lora_shape(policy) or {}
    if saved_lora and saved != current:
        changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        raise CheckpointError(
            f"{directory} holds a LoRA adapter with "
            + ", ".join(f"{key}={saved.get(key)!r}" for key in changed)
            + " but this run has "
            + ", ".join(f"policy.lora.{key}={current.get(key)!r}" for key in changed)
            + "; set them to match the checkpoint"
        )


def _load_adapter(model: Any, adapter_dir: Path) -> None:
    """Copy a saved adapter into the live PEFT model in place (the optimizer holds references to its
    parameters); the base weights are untouched."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{adapter_dir} has no adapter_model.safetensors")
    saved = load_file(str(weights))
    # Keys without the adapter name, as `save_pretrained` wrote them; the values share storage with the live
    # parameters.
    live = get_peft_model_state_dict(model)
    mismatched = sorted(name for name in set(saved) & set(live) if saved[name].shape != live[name].shape)
    unexpected, missing = sorted(set(saved) - set(live)), sorted(set(live) - set(saved))
    if unexpected or missing or mismatched:
        raise CheckpointError(
            f"{adapter_dir} does not match the policy's adapter (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, other shape {mismatched[:5]}); was it saved from a different base model or "
            "policy.lora settings?"
        )
    with torch.no_grad():
        for name, value in saved.items():
            live[name].copy_(value)


def _optimizer_tensors(tensors: dict[str, Any]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return state


# --- verification -----------------------------------------------------------------------------------------
def _manifest(staging: Path) -> dict[str, dict[str, Any]]:
    """Size and hash of every file of a checkpoint being written (all but the marker)."""
    return {
        path.relative_to(staging).as_posix(): {"size": path.stat().st_size, _HASH: _digest(path)}
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }


def _digest(path: Path) -> str:
    import xxhash

    digest = xxhash.xxh64()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(directory: Path) -> list[str]:
    """What is wrong with a complete checkpoint's files (empty when nothing is): each file against the size and
    hash its COMPLETE marker recorded. Checkpoints written before markers held them get a structural check:
    JSON that parses, and safetensors files whose header accounts for their size."""
    directory = Path(directory)
    try:
        marker = json.loads((directory / COMPLETE_MARKER).read_text())
    except (OSError, ValueError) as exc:
        return [f"its {COMPLETE_MARKER} marker is unreadable ({exc})"]
    recorded = marker.get("files") if isinstance(marker, dict) else None
    if recorded is None:
        return _structural_problems(directory)
    problems = []
    for name, expected in recorded.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {expected['size']} were written")
        elif _digest(path) != expected[_HASH]:
            problems.append(f"{name} does not match the hash recorded when it was written")
    return problems


def _structural_problems(directory: Path) -> list[str]:
    problems = []
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.suffix == ".json" and path.is_file():
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                problems.append(f"{name} is not valid JSON")
        elif path.suffix == ".safetensors" and path.is_file():
            problem = _safetensors_problem(path)
            if problem:
                problems.append(f"{name} {problem}")
    if not (directory / STATE_FILE).is_file():
        problems.append(f"{STATE_FILE} is missing")
    return problems


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors the header places."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "is truncated (no header)"
        length = int.from_bytes(head, "little")
        if 8 + length > size:
            return "is truncated (its header runs past the end)"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "has an unreadable header"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + length + max(ends, default=0) != size:
        return (
            f"is truncated or padded ({size} bytes, its header describes {8 + length + max(ends, default=0)})"
        )
    return None


def usable_checkpoint(root: Path) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The newest complete checkpoint that verifies, and the newer complete ones that did not (with what is
    wrong with each): a run falls back to the former and says what the latter cost."""
    damaged = []
    for _, path in reversed(_complete_checkpoints(Path(root))):
        problems = verify_checkpoint(path)
        if not problems:
            return path, damaged
        damaged.append((path, problems))
    return None, damaged


def quarantine(directory: Path) -> Path:
    """Move a damaged checkpoint aside (`iter-000007.damaged`), kept for inspection: no loader reads it, and a
    step that saves there again writes a fresh one."""
    directory = Path(directory)
    target = directory.with_name(directory.name + DAMAGED_SUFFIX)
    with writing(target):
        if target.exists():
            shutil.rmtree(target)
        directory.rename(target)
    return target


def checkpoint_index(directory: Path) -> int:
    """The iteration a checkpoint directory was written for (`iter-000007` -> 7)."""
    match = _NAME.match(Path(directory).name)
    if match is None:
        raise ValueError(f"{directory} is not a checkpoint directory")
    return int(match.group(1))


def checkpoint_indices(root: Path) -> list[int]:
    """The iterations that have a complete checkpoint under `root`, oldest first."""
    return [index for index, _ in _complete_checkpoints(Path(root))]


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`, or None."""
    complete = _complete_checkpoints(Path(root))
    return complete[-1][1] if complete else None


def prune_checkpoints(root: Path, keep: int, also_keep: Collection[int] = ()) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints and those numbered in `also_keep` (e.g. the best
    one by a metric), and staging leftovers of older steps.

    Returns the deleted paths."""
    if keep < 1:
        raise ValueError("keep must be >= 1 (pruning every checkpoint would make the run unresumable)")
    complete = _complete_checkpoints(Path(root))
    doomed = [path for index, path in complete[:-keep] if index not in also_keep]
    newest = complete[-1][0] if complete else -1
    for leftover in sorted(Path(root).glob("iter-*")) if Path(root).is_dir() else []:
        match = re.match(r"^iter-(\d+)\.(tmp|old)$", leftover.name)
        if match and int(match.group(1)) <= newest:
            doomed.append(leftover)
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


# --- RNG states as JSON / tensors --------------------------------------------------------------------------
def torch_rng_states() -> dict[str, Any]:
    """This process's torch RNG states (CPU, and every CUDA device once CUDA is in use) as tensors."""
    import torch

    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"rng.cuda.{i}": s.cpu() for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _python_rng_state() -> list[Any]:
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]


def _as_python_rng_state(data: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss_next = data
    return (version, tuple(internal), gauss_next)


def _numpy_rng_state() -> list[Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_numpy_rng_state(data: list[Any]) -> None:
    import numpy as np

    kind, keys, pos, has_gauss, cached = data
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# --- durability --------------------------------------------------------------------------------------------
def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory, so the COMPLETE marker can only be durable after the data."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_holds_lora(directory: Path | None) -> bool | None:
    """Whether a policy checkpoint holds a LoRA adapter; None without a checkpoint."""
    if directory is None:
        return None
    return (Path(directory) / ADAPTER_DIR).is_dir()
