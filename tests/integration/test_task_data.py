"""Task data read and checked before anything heavy loads: every unusable line or row named with its problem, and
prompts longer than the policy takes counted, then dropped or kept per `task.long_prompts`."""

from __future__ import annotations

import json
import logging
import time

import pytest

from mpo_agents.config import MPOConfig, TaskConfig
from mpo_agents.errors import ConfigError
from mpo_agents.policy.models import load_tokenizer
from mpo_agents.policy.tokens import PromptMeter, encode_prompt
from mpo_agents.rundir import write_jsonl
from mpo_agents.runner import checked_task, execute
from mpo_agents.tasks import build_task
from mpo_agents.tasks.data import PromptBudget
from tests.support import TEST_ENV, run_overrides
from tests.support.cli import as_options, mpo
from tests.support.runs import prepared_run


def load_error(path, **settings) -> str:
    with pytest.raises(ConfigError) as caught:
        build_task(TaskConfig(data_path=path, **settings))
    return str(caught.value)


def test_every_unusable_line_is_named_with_its_problem(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(
        b'{"prompt": "Write about rivers."}\n'
        b'["Write about cats."]\n'
        b"\n"
        b'{"prompt": "caf\xe9 culture"}\n'
        b'{"prompt": "Write about dogs."\n'
        b'"Write about cities."\n'
    )
    message = load_error(path)
    assert f"task.data_path: {path} has 4 unusable records (task essay_writing reads prompt):" in message
    assert "line 2 is a JSON array, not an object" in message
    # Line 4 starts at byte 57 of the file (blank line 3 included); 0xe9 is its 16th byte.
    assert "line 4 is not valid UTF-8 (byte 0xe9 at byte offset 72 of the file)" in message
    assert "line 5 is not JSON: Expecting ',' delimiter (column 31)" in message
    assert "line 6 is a JSON string, not an object" in message
    assert "each line must be one JSON object, in UTF-8, holding those fields" in message


def test_an_empty_field_is_told_apart_from_a_missing_one(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": "Write about rivers."}, {"prompt": "  "}])
    assert load_error(path) == (
        f"task.data_path: {path} line 2 has an empty 'prompt' field (task essay_writing reads prompt); "
        "fix or remove it"
    )
    write_jsonl(path, [{"Prompt": "Write about rivers."}])
    assert f"{path} line 1 has no 'prompt' field (task essay_writing" in load_error(path)
    write_jsonl(path, [{"prompt": None}])
    assert "line 1 has an empty 'prompt' field" in load_error(path)
    # Tasks that map the dataset's own field names keep the distinction.
    write_jsonl(path, [{"clean_text": "", "title": "T"}, {"title": "T"}])
    message = load_error(path, name="summarization")
    assert "line 1 has an empty 'text' field" in message and "line 2 has no 'text' field" in message
    write_jsonl(path, [{"problem": "1+1?", "solution": "It is 2."}])
    assert "line 1 has no 'answer' field" in load_error(path, name="math_reasoning")


def test_parquet_rows_are_checked_like_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Write about rivers."}, {"prompt": None}]), path)
    assert f"{path} row index 1 has an empty 'prompt' field" in load_error(path)
    pq.write_table(pa.Table.from_pylist([{"question": "Write about rivers."}]), path)
    assert "row index 0 has no 'prompt' field" in load_error(path)
    pq.write_table(pa.Table.from_pylist([{"prompt": ""}, {"prompt": " "}]), path)
    message = load_error(path)
    assert "has 2 unusable records" in message and "row index 1 has an empty 'prompt' field" in message
    assert message.endswith(
        "Fix or remove them: each row must be a record holding those fields, none of them empty."
    )


def test_many_bad_lines_are_counted_not_all_listed(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": ""} for _ in range(25)])
    message = load_error(path)
    assert "has 25 unusable records" in message and "line 10 has" in message
    assert "line 11 has" not in message and "... and 15 more" in message


# -- prompt lengths -----------------------------------------------------------------------------------------

SHORT = "Write about the river."
LONG = " ".join(["Write a long essay about the city and the river and the reader."] * 20)


def long_and_short(tmp_path):
    path = tmp_path / "prompts.jsonl"
    prompts = [SHORT, LONG, SHORT + " Again.", LONG + " Twice.", SHORT + " Thrice."]
    write_jsonl(path, [{"prompt": p, "id": str(n)} for n, p in enumerate(prompts)])
    return path


def budgeted(path, model_dir, max_tokens: int, **settings):
    config = TaskConfig(data_path=path, **settings)
    return build_task(config, prompt_budget=PromptBudget(max_tokens, PromptMeter(str(model_dir))))


def test_long_prompts_are_counted_as_the_policy_encodes_them_and_dropped(tmp_path, tiny_model_dir):
    path = long_and_short(tmp_path)
    task = budgeted(path, tiny_model_dir, 200)

    assert sorted(r["id"] for r in task.records) == ["0", "2", "4"]
    tokenizer = load_tokenizer(tiny_model_dir)
    for record in task.records:  # what the policy would encode, uncut, fits
        assert len(encode_prompt(tokenizer, task.policy_conversation(record), 10**6)) <= 200
    lengths = task.prompt_lengths
    assert (lengths.prompts, lengths.too_long, lengths.limit, lengths.action) == (5, 2, 200, "drop")
    assert lengths.longest > 200 and lengths.examples[0] == f"line 4 ({lengths.longest} tokens)"
    assert lengths.summary().startswith(
        "2 of 5 prompts are longer than trainer.max_prompt_length (200 tokens)"
    )
    assert lengths.summary().endswith("dropped (task.long_prompts: drop), 3 remain")
    # Deterministic from the data and the config: a resumed run draws the same batches.
    assert budgeted(path, tiny_model_dir, 200).records == task.records


def test_truncate_keeps_long_prompts_and_says_so(tmp_path, tiny_model_dir):
    task = budgeted(long_and_short(tmp_path), tiny_model_dir, 200, long_prompts="truncate")
    assert len(task.records) == 5 and task.prompt_lengths.too_long == 2
    assert "the policy sees only their last 200 tokens" in task.prompt_lengths.summary()


def test_max_prompts_cuts_before_long_prompts_are_dropped(tmp_path, tiny_model_dir):
    # Training then reads only the first N records, as `evaluation.generation.skip` assumes.
    task = budgeted(long_and_short(tmp_path), tiny_model_dir, 200, max_prompts=2)
    assert [r["id"] for r in task.records] == ["0"] and task.prompt_lengths.prompts == 2


def test_dropping_every_prompt_is_a_config_error(tmp_path, tiny_model_dir):
    with pytest.raises(
        ConfigError, match=r"all 5 prompts are longer than trainer.max_prompt_length \(8 tokens"
    ):
        budgeted(long_and_short(tmp_path), tiny_model_dir, 8)


def test_the_runner_reports_long_prompts_in_the_run_log_and_to_the_user(tmp_path, tiny_model_dir, caplog):
    config = MPOConfig(
        task={"data_path": long_and_short(tmp_path)},
        policy={"model": str(tiny_model_dir)},
        trainer={"max_prompt_length": 200},
    )
    statuses, warnings = [], []
    with caplog.at_level(logging.INFO, logger="mpo_agents.runner"):
        task = checked_task(config, statuses.append, warnings.append)
    assert len(task.records) == 3
    (warning,) = warnings
    assert warning.startswith(f"task data {tmp_path / 'prompts.jsonl'}: 2 of 5 prompts are longer")
    assert statuses == ["reading and checking the task data", warning]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mpo_agents.runner"]
    assert logged == [("WARNING", warning)]


# -- before anything heavy --------------------------------------------------------------------------------


def test_bad_data_stops_a_run_before_the_judge_server_or_the_policy_loads(tmp_path, tiny_model_dir):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        json.dumps({"prompt": "Write about rivers."}) + "\n" + json.dumps(["not", "a record"]) + "\n"
    )
    sets = run_overrides(
        tiny_model_dir,
        "http://127.0.0.1:9/v1",  # nothing listens there: no judge is reached either way
        **{"task.data_path": path, "local_server.enabled": True, "local_server.model": tiny_model_dir},
    )
    started = time.perf_counter()
    result = mpo("run", "--run-dir", str(tmp_path / "run"), *as_options(sets), env=TEST_ENV)
    elapsed = time.perf_counter() - started

    assert result.returncode == 2, result.stderr[-2000:]
    assert "line 2 is a JSON array, not an object" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "server.log").exists()  # the local judge server never started
    assert not any((tmp_path / "run" / "policy").glob("*"))
    assert elapsed < 30, f"{elapsed:.1f} s: something heavy loaded before the data was checked"


def test_a_resume_checks_the_data_first_too(tmp_path, tiny_model_dir):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": ""}])
    config, run_dir = prepared_run(
        run_overrides(tiny_model_dir, "http://127.0.0.1:9/v1", **{"task.data_path": path}), tmp_path / "run"
    )
    statuses: list[str] = []
    with pytest.raises(ConfigError, match="line 1 has an empty 'prompt' field"):
        execute(config, run_dir, TEST_ENV, fresh=False, on_status=statuses.append)
    assert statuses == ["reading and checking the task data"]
