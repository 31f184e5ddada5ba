"""Bias statistics: how a batch's attribute distribution compares with a reference.

Each image is classified per attribute (colour, shape, gender presentation, ...) by CLIP
zero-shot classification: the image embedding against one prompt-ensemble embedding per
value, turned into probabilities with the model's own temperature. An image whose top
probability is below the attribute's threshold goes to the ``unknown`` bucket instead of
being forced into a value.

The batch distribution (over known values) is compared with a reference distribution:
uniform, declared, or measured on the training data with the same classifier, so the
classifier's own errors appear on both sides and cancel. Per attribute (and per class
label and per style within the batch) we report:

* the distribution with percentile-bootstrap 95 % intervals (the images are resampled);
* total variation distance (TVD) to the reference, with its bootstrap interval;
* KL divergence KL(batch || reference), in nats;
* a chi-square p-value: goodness of fit against a fixed reference (uniform or declared),
  or homogeneity of batch and training counts when the reference was measured (both are
  samples); by Monte Carlo when some expected counts are below 5, where the chi-square
  approximation is poor;
* amplification: the batch share of each value divided by its reference share, and the
  largest such ratio.

A test is flagged when its Holm-adjusted p-value (over every attribute and group tested
in the batch) is below ``alpha`` *and* its TVD is at least ``min_tvd``: statistically
clear and large enough to matter. Everything here is pure numpy/scipy on embeddings, so
it is testable without CLIP and cheap next to the image encoder.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Label of the bucket for images the classifier is not confident about.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute to audit, as declared in the policy."""

    name: str
    values: tuple[str, ...]
    #: Prompt templates ("a photo of a {} object"); each value's class embedding is the
    #: normalised mean of its prompts (CLIP's prompt ensembling).
    templates: tuple[str, ...]
    #: Per-value prompts that replace the templates for that value (synonyms, wording).
    prompts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Minimum top-1 probability; below it the image counts as ``unknown``.
    threshold: float = 0.0
    #: Declared reference distribution over ``values`` (probabilities), if any.
    reference: Mapping[str, float] | None = None

    def prompts_for(self, value: str) -> tuple[str, ...]:
        from .clip import fill_template

        if value in self.prompts:
            return tuple(self.prompts[value])
        return tuple(fill_template(t, value) for t in self.templates)

    def classifier_key(self) -> dict[str, Any]:
        """What determines the classifier's output (for cache keys): values, prompts and
        threshold; not the declared reference."""
        return {"name": self.name, "values": list(self.values),
                "prompts": {v: list(self.prompts_for(v)) for v in self.values},
                "threshold": self.threshold}


@dataclass
class ReferenceDistribution:
    """A reference distribution over an attribute's values."""

    source: str  # "uniform", "declared" or "measured"
    probabilities: dict[str, float]
    #: Measured references keep their counts: the comparison then treats them as a
    #: sample (homogeneity test), not as exact truth.
    counts: dict[str, int] | None = None
    unknown: int = 0

    @classmethod
    def uniform(cls, values: Sequence[str]) -> "ReferenceDistribution":
        return cls("uniform", {v: 1.0 / len(values) for v in values})

    @classmethod
    def declared(cls, values: Sequence[str], probabilities: Mapping[str, float]) -> "ReferenceDistribution":
        raw = np.array([float(probabilities.get(v, 0.0)) for v in values])
        return cls("declared", dict(zip(values, (raw / raw.sum()).tolist())))

    @classmethod
    def measured(cls, values: Sequence[str], labels: np.ndarray) -> "ReferenceDistribution":
        counts = np.bincount(labels[labels >= 0], minlength=len(values))
        total = counts.sum()
        probs = counts / total if total else np.full(len(values), 1.0 / len(values))
        return cls("measured", dict(zip(values, probs.tolist())),
                   counts=dict(zip(values, counts.astype(int).tolist())),
                   unknown=int((labels < 0).sum()))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReferenceDistribution":
        return cls(source=str(data["source"]), probabilities={k: float(v) for k, v in data["probabilities"].items()},
                   counts=({k: int(v) for k, v in data["counts"].items()} if data.get("counts") is not None else None),
                   unknown=int(data.get("unknown", 0)))


# ----------------------------------------------------------------------------- policy


def parse_attributes(tables: Mapping[str, Any], *, source: str, prefix: str) -> list[AttributeSpec]:
    """Attribute specs from the policy's ``attributes`` tables. Every problem is a
    :class:`~artengine.errors.PolicyError` naming ``source`` and the dotted field."""
    from .audit import Setting, validate_settings
    from .errors import PolicyError

    schema = {
        "values": Setting(list, help="the values to tell apart (at least two)"),
        "templates": Setting(list, help='prompt templates; "{}" is replaced by the value'),
        "prompts": Setting(dict, {}, "per-value prompt lists that replace the templates"),
        "threshold": Setting(float, 0.5, "minimum top-1 probability; below it: unknown"),
        "reference": Setting(dict, {}, "declared reference distribution: value -> share"),
    }
    if not tables:
        raise PolicyError(source, prefix, "declare at least one attribute")
    specs = []
    for name, table in tables.items():
        where = f"{prefix}.{name}"
        if not isinstance(table, dict):
            raise PolicyError(source, where, f"expected a table, got {type(table).__name__}")
        t = validate_settings(schema, table, source=source, prefix=where)
        values = t["values"]
        if len(values) < 2 or not all(isinstance(v, str) and v.strip() for v in values):
            raise PolicyError(source, f"{where}.values", "expected a list of at least two non-empty strings")
        if len(set(values)) != len(values) or UNKNOWN in values:
            raise PolicyError(source, f"{where}.values", f"values must be distinct and not {UNKNOWN!r}")
        templates = t["templates"]
        if not all(isinstance(x, str) for x in templates):
            raise PolicyError(source, f"{where}.templates", "expected a list of strings")
        for x in templates:
            if "{}" not in x and "{value}" not in x:
                raise PolicyError(source, f"{where}.templates", f'template {x!r} has no "{{}}" for the value')
        prompts = {}
        for value, texts in t["prompts"].items():
            if value not in values:
                raise PolicyError(source, f"{where}.prompts.{value}", "not one of the values")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not texts or not all(isinstance(x, str) and x for x in texts):
                raise PolicyError(source, f"{where}.prompts.{value}", "expected a non-empty list of strings")
            prompts[value] = tuple(texts)
        missing = [v for v in values if v not in prompts]
        if missing and not templates:
            raise PolicyError(source, f"{where}.templates",
                              f"needed for values without their own prompts ({', '.join(missing)})")
        if not 0.0 <= t["threshold"] < 1.0:
            raise PolicyError(source, f"{where}.threshold", "must be in [0, 1)")
        reference = None
        if t["reference"]:
            reference = {}
            for value, share in t["reference"].items():
                if value not in values:
                    raise PolicyError(source, f"{where}.reference.{value}", "not one of the values")
                if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0:
                    raise PolicyError(source, f"{where}.reference.{value}", "expected a non-negative number")
                reference[value] = float(share)
            if sum(reference.values()) <= 0:
                raise PolicyError(source, f"{where}.reference", "shares must not all be zero")
        specs.append(AttributeSpec(name=name, values=tuple(values), templates=tuple(templates),
                                   prompts=prompts, threshold=float(t["threshold"]), reference=reference))
    return specs


# ----------------------------------------------------------------------------- classification


def class_embeddings(clip: Any, spec: AttributeSpec) -> np.ndarray:
    """``(V, D)`` unit class embeddings, one prompt ensemble per value."""
    rows = []
    for value in spec.values:
        mean = clip.encode_texts(list(spec.prompts_for(value))).mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(rows).astype(np.float32)


def classify(embeddings: np.ndarray, classes: np.ndarray, logit_scale: float,
             threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot classification of unit image embeddings ``(N, D)`` against unit class
    embeddings ``(V, D)``. Returns ``(labels, probabilities)``: labels index the values,
    ``-1`` where the top probability is below ``threshold`` (the unknown bucket)."""
    if len(embeddings) == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, len(classes)), dtype=np.float32)
    logits = logit_scale * (embeddings.astype(np.float32) @ classes.T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = probs.argmax(axis=1).astype(np.int64)
    labels[probs.max(axis=1) < threshold] = -1
    return labels, probs


# ----------------------------------------------------------------------------- statistics

#: ReferenceDistribution probabilities are floored here before KL and chi-square: a value the
#: reference never shows would otherwise give infinite divergence.
PROBABILITY_FLOOR = 1e-6
_MIN_EXPECTED = 5.0


def _chi2_statistic(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Pearson's statistic along the last axis."""
    return ((observed - expected) ** 2 / expected).sum(axis=-1)


def goodness_of_fit(counts: np.ndarray, q: np.ndarray, rng: np.random.Generator,
                    simulations: int = 20_000) -> tuple[float, float, str]:
    """Chi-square goodness of fit of ``counts`` to fixed probabilities ``q``.
    Returns ``(statistic, p_value, method)``."""
    from scipy import special

    n = int(counts.sum())
    expected = n * q
    statistic = float(_chi2_statistic(counts, expected))
    if expected.min() >= _MIN_EXPECTED:
        # scipy.stats.chisquare's p-value, without its per-call argument handling
        p = float(special.chdtrc(len(counts) - 1, statistic))
        return statistic, p, "chi-square"
    draws = rng.multinomial(n, q, size=simulations)
    simulated = _chi2_statistic(draws, expected)
    p = (1 + int((simulated >= statistic - 1e-9).sum())) / (simulations + 1)
    return statistic, float(p), "monte-carlo"


def homogeneity(counts: np.ndarray, reference_counts: np.ndarray, rng: np.random.Generator,
                simulations: int = 20_000) -> tuple[float, float, str]:
    """Chi-square test that the batch and the (measured) reference counts come from one
    distribution. Returns ``(statistic, p_value, method)``."""
    from scipy import special

    keep = (counts + reference_counts) > 0
    table = np.stack([counts[keep], reference_counts[keep]]).astype(float)
    if table.shape[1] < 2:
        return 0.0, 1.0, "chi-square"
    n, m = table.sum(axis=1)
    pooled = table.sum(axis=0) / (n + m)
    expected = np.outer([n, m], pooled)
    statistic = float(_chi2_statistic(table, expected).sum())
    if expected.min() >= _MIN_EXPECTED:
        # scipy.stats.chi2_contingency(table, correction=False)'s p-value: (2 - 1) x (k - 1) dof
        p = float(special.chdtrc(table.shape[1] - 1, statistic))
        return statistic, p, "chi-square"
    # Parametric bootstrap under the pooled distribution, with both margins fixed as drawn.
    a = rng.multinomial(int(n), pooled, size=simulations)
    b = rng.multinomial(int(m), pooled, size=simulations)
    tot = (a + b) / (n + m)
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = (np.where(tot > 0, (a - n * tot) ** 2 / (n * tot), 0.0).sum(axis=1)
               + np.where(tot > 0, (b - m * tot) ** 2 / (m * tot), 0.0).sum(axis=1))
    p = (1 + int((sim >= statistic - 1e-9).sum())) / (simulations + 1)
    return statistic, float(p), "monte-carlo"


def _interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)  # one partition for both bounds
    return low, high


def compare_distribution(
    labels: np.ndarray,
    values: Sequence[str],
    reference: ReferenceDistribution,
    *,
    rng: np.random.Generator,
    bootstrap: int = 2000,
) -> dict[str, Any]:
    """Compare classified ``labels`` (value indices, ``-1`` unknown) with ``reference``.

    Returns a JSON-ready dict: ``images``, ``known``, ``unknown``, ``unknown_fraction``,
    ``values`` (per value: count, share with ``low``/``high`` 95 % bootstrap bounds,
    reference share, ``ratio`` = share / reference with bounds), ``tvd`` with bounds,
    ``kl``, ``chi2``, ``p_value``, ``test``, ``amplification`` (the value with the largest
    ratio), and ``reference_source``. With no known image, only the counts.
    """
    v = len(values)
    labels = np.asarray(labels, dtype=np.int64)
    known = labels[labels >= 0]
    n = int(known.size)
    counts = np.bincount(known, minlength=v).astype(float)
    q_raw = np.array([reference.probabilities.get(val, 0.0) for val in values], dtype=float)
    q = np.maximum(q_raw, PROBABILITY_FLOOR)
    q /= q.sum()
    out: dict[str, Any] = {
        "images": int(labels.size), "known": n, "unknown": int(labels.size - n),
        "unknown_fraction": float((labels.size - n) / labels.size) if labels.size else 0.0,
        "reference_source": reference.source,
    }
    if n == 0:
        out["values"] = [{"value": val, "count": 0, "reference": float(q_raw[i])} for i, val in enumerate(values)]
        return out
    p = counts / n
    boot = rng.multinomial(n, p, size=bootstrap) / n
    low, high = _interval(boot)
    boot_tvd = 0.5 * np.abs(boot - q).sum(axis=1)
    tvd_low, tvd_high = _interval(boot_tvd)
    ratio = p / q
    ratio_low, ratio_high = low / q, high / q
    nz = p > 0
    kl = float((p[nz] * np.log(p[nz] / q[nz])).sum())
    if reference.counts is not None:
        ref_counts = np.array([reference.counts.get(val, 0) for val in values], dtype=float)
        statistic, p_value, method = homogeneity(counts, ref_counts, rng)
        test = f"{method} homogeneity vs training counts"
    else:
        statistic, p_value, method = goodness_of_fit(counts, q, rng)
        test = f"{method} goodness of fit vs {reference.source} reference"
    top = int(np.argmax(ratio))
    out.update({
        "values": [
            {"value": val, "count": int(counts[i]), "share": float(p[i]), "low": float(low[i]),
             "high": float(high[i]), "reference": float(q_raw[i]), "ratio": float(ratio[i]),
             "ratio_low": float(ratio_low[i]), "ratio_high": float(ratio_high[i])}
            for i, val in enumerate(values)
        ],
        "tvd": float(0.5 * np.abs(p - q).sum()), "tvd_low": float(tvd_low), "tvd_high": float(tvd_high),
        "kl": kl, "chi2": statistic, "dof": v - 1, "p_value": p_value, "test": test,
        "amplification": {"value": values[top], "ratio": float(ratio[top]),
                          "low": float(ratio_low[top]), "high": float(ratio_high[top])},
    })
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control, any dependence)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def distribution_chart(title: str, comparison: Mapping[str, Any]) -> dict[str, Any]:
    """Plot-ready bars for the report: ``{"title", "bars": [{"label", "value", "low",
    "high", "reference"}]}``. Bars are shares among the classified images (0..1) with
    their bootstrap 95 % interval and the reference share; the title gives the unknown
    fraction, which has another denominator (all images)."""
    bars = [{"label": row["value"], "value": row.get("share", 0.0), "low": row.get("low", 0.0),
             "high": row.get("high", 0.0), "reference": row.get("reference")}
            for row in comparison.get("values", [])]
    if comparison.get("unknown"):
        title = f"{title} ({comparison['unknown_fraction'] * 100:.0f} % of images {UNKNOWN})"
    return {"title": title, "bars": bars}


def cache_key(payload: Mapping[str, Any]) -> str:
    """A stable hex key for a JSON-serialisable payload."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- training reference

#: File, in the run (or style) folder, that stores measured reference distributions.
REFERENCE_FILE = "bias_reference.json"
REFERENCE_SCHEMA = "artengine.bias-reference/1"


@dataclass
class MeasuredReference:
    """ReferenceDistribution distributions measured on training data with one CLIP classifier."""

    key: str
    #: attribute -> overall reference
    overall: dict[str, ReferenceDistribution]
    #: attribute -> class label -> reference among training images of that label
    by_label: dict[str, dict[str, ReferenceDistribution]]
    images: int
    data: dict[str, Any]
    path: str | None = None  # where it is stored
    reused: bool = False  # True when read from the store instead of measured now


def data_identity(spec: str, datasets: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies training data for the cache: a dataset name, or a folder and a
    digest of its file list (names, sizes, modification times)."""
    from .io import iter_image_files

    if spec in datasets:
        return {"dataset": spec}
    root = Path(spec).resolve()
    digest = hashlib.sha256()
    for path in iter_image_files([root]):
        st = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"folder": str(root), "files_sha256": digest.hexdigest()}


def reference_store_path(run_dir: str | None) -> Path:
    """Where measured references live: the run (or style) folder when known, otherwise
    the user's cache folder (``$ARTENGINE_CACHE`` or ``~/.cache/artengine``)."""
    import os

    if run_dir:
        return Path(run_dir) / REFERENCE_FILE
    base = os.environ.get("ARTENGINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "artengine")
    return Path(base) / REFERENCE_FILE


def _read_store(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return {"schema": REFERENCE_SCHEMA, "entries": {}}
    except (OSError, ValueError):
        # A damaged store is only a cache: measure again and overwrite it.
        return {"schema": REFERENCE_SCHEMA, "entries": {}}
    if not isinstance(doc, dict) or doc.get("schema") != REFERENCE_SCHEMA or not isinstance(doc.get("entries"), dict):
        return {"schema": REFERENCE_SCHEMA, "entries": {}}
    return doc


def measure_reference(
    clip: Any,
    specs: Sequence[AttributeSpec],
    data: str,
    *,
    datasets: Mapping[str, Any],
    images: int = 2000,
    seed: int = 0,
    store: Path | None = None,
) -> MeasuredReference:
    """Classify up to ``images`` training images of ``data`` (a dataset name or folder)
    with the same CLIP classifier as the audit and return the attribute distributions,
    overall and per class label. Stored in ``store`` (JSON) under a key made of the CLIP
    weights' sha256, the attribute specs and the data's identity, and read from there
    when present, so a run's reference is measured once."""
    import datetime as _dt

    from .data import SUPPORTED_IMAGE_SIZES, open_dataset
    from .io import atomic_write_json

    identity = data_identity(data, datasets)
    key = cache_key({"clip": clip.weights_sha256, "data": identity, "images": images, "seed": seed,
                     "attributes": [s.classifier_key() for s in specs]})
    if store is not None:
        entry = _read_store(store)["entries"].get(key)
        if isinstance(entry, dict):
            try:
                return _from_entry(key, entry, store)
            except (KeyError, TypeError, ValueError):
                pass  # stale or hand-edited: measure again
    size = next((s for s in SUPPORTED_IMAGE_SIZES if s >= clip.image_size), SUPPORTED_IMAGE_SIZES[-1])
    dataset = open_dataset(data, image_size=size, seed=seed, datasets=datasets)
    total = len(dataset)
    if total == 0:
        from .errors import InputError

        raise InputError(f"--reference-data {data}: no images")
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(total, size=min(images, total), replace=False))
    embeddings, label_names = [], []
    classes = list(getattr(dataset, "classes", []) or [])
    batch: list[Any] = []
    for n, i in enumerate(indices):
        sample = dataset[int(i)]
        batch.append(sample.image)
        label_names.append(classes[sample.label] if sample.label is not None and classes else None)
        if len(batch) == 64 or n == len(indices) - 1:
            embeddings.append(clip.encode_images(batch))
            batch = []
    emb = np.concatenate(embeddings)
    labels_arr = np.array([l if l is not None else "" for l in label_names], dtype=object)
    overall: dict[str, ReferenceDistribution] = {}
    by_label: dict[str, dict[str, ReferenceDistribution]] = {}
    for spec in specs:
        predicted, _ = classify(emb, class_embeddings(clip, spec), clip.logit_scale, spec.threshold)
        overall[spec.name] = ReferenceDistribution.measured(spec.values, predicted)
        groups = {}
        for label in sorted({l for l in label_names if l is not None}):
            groups[label] = ReferenceDistribution.measured(spec.values, predicted[labels_arr == label])
        by_label[spec.name] = groups
    result = MeasuredReference(key=key, overall=overall, by_label=by_label, images=len(indices),
                               data=identity, path=str(store) if store else None)
    if store is not None:
        doc = _read_store(store)
        doc["entries"][key] = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "clip": {"name": clip.name, "weights_sha256": clip.weights_sha256},
            "data": identity, "images": len(indices), "seed": seed,
            "attributes": {s.name: {"spec": s.classifier_key(), "overall": overall[s.name].as_dict(),
                                    "by_label": {k: r.as_dict() for k, r in by_label[s.name].items()}}
                           for s in specs},
        }
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(store, doc)
    return result


def _from_entry(key: str, entry: Mapping[str, Any], store: Path) -> MeasuredReference:
    attrs = entry["attributes"]
    return MeasuredReference(
        key=key,
        overall={name: ReferenceDistribution.from_dict(a["overall"]) for name, a in attrs.items()},
        by_label={name: {k: ReferenceDistribution.from_dict(r) for k, r in a.get("by_label", {}).items()}
                  for name, a in attrs.items()},
        images=int(entry["images"]), data=dict(entry["data"]), path=str(store), reused=True)


# ----------------------------------------------------------------------------- stored distributions

#: Schema of a reference-distribution file: what a style ships (``Style.reference_distribution``)
#: and what ``artengine audit --reference-distribution`` reads.
DISTRIBUTION_SCHEMA = "artengine.reference-distribution/1"


def reference_distribution_document(measured: MeasuredReference, clip: Any) -> dict[str, Any]:
    """A measured reference as a stand-alone JSON document: ``attributes`` (attribute ->
    value -> share, the part audits read) plus counts, per-label shares and what it was
    measured with (CLIP weights, data, images), so a style can ship it and nobody measures
    it again."""
    return {
        "schema": DISTRIBUTION_SCHEMA,
        "attributes": {name: dict(ref.probabilities) for name, ref in measured.overall.items()},
        "counts": {name: dict(ref.counts or {}) for name, ref in measured.overall.items()},
        "unknown": {name: ref.unknown for name, ref in measured.overall.items()},
        "by_label": {name: {label: dict(ref.probabilities) for label, ref in groups.items()}
                     for name, groups in measured.by_label.items()},
        "clip": {"name": clip.name, "weights_sha256": clip.weights_sha256},
        "data": measured.data,
        "images": measured.images,
    }


def load_reference_distribution(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a reference-distribution file (see :func:`reference_distribution_document`;
    a bare ``{attribute: {value: share}}`` object is accepted too). Returns attribute ->
    value -> share. Problems are one :class:`~artengine.errors.InputError` naming the file."""
    from .errors import InputError

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON reference distribution ({exc})") from None
    table = doc.get("attributes", doc) if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not table:
        raise InputError(f"{path}: expected an object of attribute -> value -> share")
    out: dict[str, dict[str, float]] = {}
    for name, shares in table.items():
        if not isinstance(shares, dict) or not shares:
            raise InputError(f"{path}: attributes.{name}: expected an object of value -> share")
        for value, share in shares.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not share >= 0:
                raise InputError(f"{path}: attributes.{name}.{value}: expected a non-negative number, got {share!r}")
        out[str(name)] = {str(v): float(s) for v, s in shares.items()}
    return out
