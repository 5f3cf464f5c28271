"""`mpo generate`: a policy's responses to a task's test prompts, as JSONL, for `mpo eval`.

The source is a run directory (its newest policy checkpoint, full weights or a LoRA adapter on the run's base
model) or a model (the `policy.model` forms: `smollm2-135m` or a local Hugging Face directory), so a trained
MPO policy, its fixed-rubric baselines and the untrained base model are generated the same way: the task's
policy prompt, the training run's chat template and prompt truncation, and fixed decoding settings.

Rows are appended one batch at a time and fsynced, so an interrupted generation resumes where it stopped; a
settings file beside the output makes sure a resume continues the *same* generation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents.errors import ConfigError

if TYPE_CHECKING:
    from mpo_agents.config import EvalGenerationConfig, MPOConfig
    from mpo_agents.tasks import Task

logger = logging.getLogger(__name__)
SETTINGS_SUFFIX = ".settings.json"


@dataclass(frozen=True)
class Source:
    """What to generate with: the run or model it came from, and the weights to load."""

    system: str  # the name the rows carry (and tournaments and reports show)
    description: str  # run dir or model, for the settings file
    base_model: str  # `policy.model` form
    checkpoint: str | None  # a run's policy checkpoint directory, if it has one


def resolve_source(source: Path | str, config: MPOConfig, system: str | None = None) -> Source:
    """A run directory (has `config.yaml`) or a model; a run's checkpoint is its newest complete one."""
    from mpo_agents.policy.weight_checkpoints import latest_checkpoint
    from mpo_agents.rundir import CONFIG_FILE, RunDirectory

    path = Path(source)
    if (path / CONFIG_FILE).is_file():
        checkpoint = latest_checkpoint(RunDirectory(path).policy_dir)
        if checkpoint is None:
            logger.warning("%s has no policy checkpoint yet; generating with its base model", path)
        return Source(
            system=system or path.resolve().name,
            description=str(path.resolve()),
            base_model=config.policy.model,
            checkpoint=str(checkpoint) if checkpoint else None,
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(
            f"{path} is neither a run directory (no {CONFIG_FILE}) nor a Hugging Face model directory "
            f"(no config.json)"
        )
    name = path.resolve().name if path.is_dir() else str(source)
    return Source(system=system or name, description=str(source), base_model=str(source), checkpoint=None)


def load_model(source: Source, config: MPOConfig) -> tuple[Any, Any, str]:
    """(model, tokenizer, device) ready for generation: a checkpoint's full weights, or its LoRA adapter merged
    into the base model, or the base model itself."""
    from mpo_agents.policy.models import load_policy_model, resolve_device, resolve_dtype, resolve_model_dir
    from mpo_agents.policy.weight_checkpoints import ADAPTER_DIR, MODEL_DIR

    device = resolve_device(config.policy)
    dtype = resolve_dtype(config.policy, device)
    checkpoint = Path(source.checkpoint) if source.checkpoint else None
    if checkpoint is not None and (checkpoint / MODEL_DIR).is_dir():
        model, tokenizer = load_policy_model(checkpoint / MODEL_DIR, device, dtype)
    else:
        model, tokenizer = load_policy_model(resolve_model_dir(source.base_model), device, dtype)
        if checkpoint is not None and (checkpoint / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(checkpoint / ADAPTER_DIR)).merge_and_unload()
    model.eval()
    return model, tokenizer, device


def evaluation_task(config: MPOConfig) -> Task:
    """The task, reading `evaluation.generation.data_path` when set (else the training data)."""
    from mpo_agents.tasks import build_task

    settings = config.evaluation.generation
    update: dict[str, Any] = {"max_prompts": None, "split": settings.split}
    if settings.data_path is not None:
        update["data_path"] = settings.data_path
    return build_task(config.task.model_copy(update=update))


def test_records(task: Task, settings: EvalGenerationConfig) -> list[dict[str, Any]]:
    """The records to generate for, in file order (not the training shuffle), each with a stable `id`."""
    records = task.prepare_records(task.load_records())
    with_ids = [{**record, "id": str(record.get("id", index))} for index, record in enumerate(records)]
    if any("split" in record for record in with_ids):
        with_ids = [record for record in with_ids if record.get("split") == settings.split]
        if not with_ids:
            raise ConfigError(
                f"evaluation.generation.split: no record of {task.data_path} has split '{settings.split}'"
            )
    ids = [record["id"] for record in with_ids]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{task.data_path}: record ids repeat; tournaments align systems by id")
    kept = with_ids[settings.skip :]
    return kept[: settings.limit] if settings.limit else kept


def generation_settings(source: Source, task: Task, config: MPOConfig) -> dict[str, Any]:
    """What must match for a resume to continue the same generation."""
    return {
        "source": asdict(source),
        "task": task.name,
        "data_path": str(task.data_path),
        "decoding": config.evaluation.generation.model_dump(
            mode="json", exclude={"batch_size", "limit", "skip"}
        ),
        "max_prompt_length": config.trainer.max_prompt_length,
    }


def generate(
    source: Source,
    config: MPOConfig,
    output: Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Write the rows still missing from `output`; returns (rows written now, rows in total)."""
    task = evaluation_task(config)
    settings = config.evaluation.generation
    records = test_records(task, settings)
    expected = generation_settings(source, task, config)
    done = _resume_state(output, expected)
    todo = [record for record in records if record["id"] not in done]
    if on_progress:
        on_progress(len(records) - len(todo), len(records))
    if not todo:
        return 0, len(records)
    model, tokenizer, device = load_model(source, config)
    written = 0
    with open(output, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start : start + settings.batch_size]
            rows = _generate_batch(model, tokenizer, device, task, batch, source.system, config)
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())
            written += len(rows)
            if on_progress:
                on_progress(len(records) - len(todo) + written, len(records))
    return written, len(records)


def _resume_state(output: Path, expected: dict[str, Any]) -> set[str]:
    """Ids already in `output`, after checking its settings file; creates both when starting afresh. A torn
    last line (a kill mid-write) is dropped so the append continues on a clean line."""
    settings_path = output.with_name(output.name + SETTINGS_SUFFIX)
    if output.exists() and settings_path.exists():
        saved = json.loads(settings_path.read_text(encoding="utf-8"))
        if saved != expected:
            changed = sorted(key for key in expected if saved.get(key) != expected[key])
            raise ConfigError(
                f"{output} was generated with other settings ({', '.join(changed)} differ); "
                f"write to a new --output or delete it to start again"
            )
        from mpo_agents.rundir import read_checked_jsonl, write_jsonl

        rows = read_checked_jsonl(output, ("id",), "generations", torn_tail_ok=True)
        if len(rows) != sum(bool(line.strip()) for line in output.read_text(encoding="utf-8").splitlines()):
            write_jsonl(output, rows)  # drop the torn line, so the next append starts on a line of its own
        return {row["id"] for row in rows}
    if output.exists() and output.stat().st_size:
        raise ConfigError(f"{output} exists but was not written by `mpo generate`; choose another --output")
    from mpo_agents.rundir import atomic_write_text

    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_path, json.dumps(expected, indent=2))
    output.write_text("", encoding="utf-8")
    return set()


def _generate_batch(
    model: Any,
    tokenizer: Any,
    device: str,
    task: Task,
    records: list[dict[str, Any]],
    system: str,
    config: MPOConfig,
) -> list[dict[str, Any]]:
    import torch

    from mpo_agents.policy.tokens import cut_after_eos, encode_prompt, left_pad

    settings = config.evaluation.generation
    prompts = [
        encode_prompt(tokenizer, task.policy_conversation(record), config.trainer.max_prompt_length)
        for record in records
    ]
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id, 1, device)
    eos_ids = _eos_ids(model, tokenizer)
    sampling = settings.temperature > 0
    decoding: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": settings.max_new_tokens}
    if sampling:
        decoding["temperature"] = settings.temperature
        torch.manual_seed(settings.seed)
    else:  # greedy: clear sampling knobs the model's generation_config may carry, so transformers stays quiet
        decoding.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids),
            **decoding,
        )
    completions = cut_after_eos(output[:, input_ids.shape[1] :].tolist(), eos_ids)
    texts = tokenizer.batch_decode([ids for ids, _ in completions], skip_special_tokens=True)
    return [
        {
            "id": record["id"],
            "system": system,
            "task": task.name,
            "prompt": task.prompt_variables(record)["task_input"],
            "response": text.strip(),
            "reference": task.evaluation_reference(record),
            "truncated": truncated,
            "completion_tokens": len(ids),
        }
        for record, (ids, truncated), text in zip(records, completions, texts, strict=True)
    ]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def read_generations(path: Path) -> list[dict[str, Any]]:
    """Rows of a generations file, checked: each needs `id` and `response`, ids unique."""
    from mpo_agents.rundir import read_checked_jsonl

    rows = read_checked_jsonl(path, ("id", "response"), "a generations file written by `mpo generate`")
    ids = [str(row["id"]) for row in rows]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: ids repeat")
    if not rows:
        raise ConfigError(f"{path} holds no generations")
    return rows


def system_name(path: Path, rows: list[dict[str, Any]]) -> str:
    """The system a generations file belongs to: its rows' `system`, else the file name."""
    names = {row.get("system") for row in rows} - {None}
    return str(names.pop()) if len(names) == 1 else Path(path).name.split(".")[0]
