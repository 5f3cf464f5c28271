"""examples/scale_gpu.yaml scaled to one GPU: one process, HF rollouts (no vLLM here), SQLite checkpoints, a
random SmolLM2-135M-shaped model in place of Qwen2.5-1.5B, the scripted test judge on 127.0.0.1 in place of
the hosted judges; the example's batch (8 prompts x 8), scoring (per_item), lr, beta and meta cadence kept.

    python benchmarks/scale_gpu_fit.py MODEL_DIR [ITERATIONS] [TOKENS] [META_EVERY]
"""

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loop_bench import node_seconds

from mpo_agents.config import load_config
from mpo_agents.runner import execute, new_run_dir
from tests.support.judge_server import JudgeServer, KeywordRule


class WordCount(KeywordRule):
    """Judge prompts: the response's word count modulo 6 (varied rewards for a random policy); meta prompts: the
    test judge's fixed replies."""

    def count(self, prompt_text: str) -> int | None:
        blocks = re.findall(r"<response>(.*?)</response>", prompt_text, re.DOTALL)
        return None if not blocks else len(blocks[-1].split()) % 6


model, iterations = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 128
meta_every = int(sys.argv[4]) if len(sys.argv) > 4 else 2
config = yaml.safe_load((ROOT / "examples" / "scale_gpu.yaml").read_text())
with tempfile.TemporaryDirectory() as tmp, JudgeServer(WordCount("good")) as server:
    config["policy"]["model"] = model
    config["policy"]["generation"]["max_new_tokens"] = tokens
    del config["policy"]["rollout"]
    for role in ("judge", "meta_judge"):
        config[role] = {
            "model": "openai/test-judge",
            "api_base": server.url,
            "api_key_env": "TEST_JUDGE_KEY",
            "timeout": 30,
            "retries": 2,
            "retry_backoff": 0.01,
        }
    config["judge"]["max_concurrency"] = 256
    config["schedule"] = {"iterations": iterations, "meta_every": meta_every}
    del config["output"]
    path = Path(tmp) / "scale_gpu_fit.yaml"
    path.write_text(yaml.safe_dump(config))
    fitted = load_config(path, [])
    run = new_run_dir(fitted, Path(tmp) / "run")
    start = time.perf_counter()
    outcome = execute(fitted, run, {"TEST_JUDGE_KEY": "k"}, fresh=True)
    wall = time.perf_counter() - start
    nodes = node_seconds(run.root)
    metrics = run.metrics()
    keep = (
        "iteration",
        "reward_mean",
        "update_seconds",
        "update_checkpoint_seconds",
        "update_peak_memory_mb",
        "update_memory_mb",
        "judge_failures",
    )
    print("outcome:", getattr(outcome, "status", outcome), f"wall {wall:.1f} s")
    print("mean node seconds, iterations 2+:", {k: round(statistics.mean(v), 2) for k, v in nodes.items()})
    for record in metrics:
        print({k: record[k] for k in keep if k in record})
    print("rubric versions:", sorted(p.name for p in (run.root / "rubrics").glob("v*.md")))
