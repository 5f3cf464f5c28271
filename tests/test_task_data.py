"""Task data read and checked: every unusable line or row named with its problem."""

from __future__ import annotations

import pytest

from mpo_agents.config import TaskConfig
from mpo_agents.errors import ConfigError
from mpo_agents.rundir import write_jsonl
from mpo_agents.tasks import build_task


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


def test_many_bad_lines_are_counted_not_all_listed(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": ""} for _ in range(25)])
    message = load_error(path)
    assert "has 25 unusable records" in message and "line 10 has" in message
    assert "line 11 has" not in message and "... and 15 more" in message
