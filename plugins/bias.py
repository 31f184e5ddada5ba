"""The built-in ``bias`` audit: does a batch over- or under-represent attributes?

Batch-level only (``per_image = False``). For every attribute declared in the policy, the
images' CLIP embeddings (the shared ``clip`` feature) are classified zero-shot, and the
batch distribution is compared with a reference: uniform, declared, or measured on the
training data with the same classifier. The comparison is repeated per class label and
per style found in the images' metadata. Statistics and the decision rule are in
:mod:`artengine.bias`; docs/bias.md is the user guide.

One finding per attribute: ``fail`` when a test is flagged (Holm-adjusted p below
``alpha`` and TVD at least ``min_tvd``), ``unknown`` when the batch is too small or the
classifier is unsure about too many images, ``error`` when no reference can be had,
``pass`` otherwise. ``Finding.details`` holds every number a report needs (see
docs/bias.md, "What the finding contains"), including ``charts`` for bars with intervals.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from artengine import (
    Audit,
    AuditContext,
    AuditItem,
    Finding,
    InputError,
    PolicyError,
    ReferenceDistribution,
    Setting,
    class_embeddings,
    classify,
    compare_distribution,
    distribution_chart,
    get_plugins,
    holm,
    hookimpl,
    measure_reference,
    parse_attributes,
    reference_store_path,
)

ARTENGINE_HOOK_API = "1.0"

REFERENCE_CHOICES = ("auto", "training", "declared", "uniform")
#: Metadata keys the batch is broken down by, and what the report calls each group.
GROUP_KEYS = {"label": "by_label", "style": "by_style"}


class BiasAudit(Audit):
    """Attribute distribution of the batch against the training (or a declared) one."""

    name = "bias"
    description = ("CLIP zero-shot attribute statistics against the training distribution: "
                   "bootstrap intervals, TVD, KL, chi-square, amplification; per label and style")
    needs = frozenset({"clip"})
    per_image = False
    settings_schema = {
        "attributes": Setting(dict, help="[audits.bias.attributes.<name>] tables: values, templates, "
                                         "prompts, threshold, reference"),
        "reference": Setting(str, "auto", "where the reference distribution comes from", choices=REFERENCE_CHOICES),
        "reference_images": Setting(int, 2000, "training images classified to measure the reference"),
        "alpha": Setting(float, 0.01, "family-wise error rate over all tests of a batch (Holm)"),
        "min_tvd": Setting(float, 0.1, "smallest total variation distance worth flagging"),
        "min_images": Setting(int, 20, "fewer classified images than this: outcome unknown"),
        "min_group_images": Setting(int, 20, "smallest label/style group that is tested on its own"),
        "max_unknown": Setting(float, 0.5, "larger unknown fraction than this: outcome unknown"),
        "groups": Setting(list, ["label", "style"], "image metadata keys to break the batch down by"),
        "bootstrap": Setting(int, 2000, "bootstrap resamples for the intervals"),
        "seed": Setting(int, 0, "seed of the bootstrap and Monte Carlo draws (reports are reproducible)"),
    }

    def __init__(self, settings: Mapping[str, Any], context: AuditContext) -> None:
        super().__init__(settings, context)
        source = context.policy_path or "policy"
        self.specs = parse_attributes(self.settings["attributes"], source=source,
                                      prefix=f"audits.{self.name}.attributes")
        checks = {"alpha": (0.0, 1.0), "min_tvd": (0.0, 1.0), "max_unknown": (0.0, 1.0)}
        for key, (low, high) in checks.items():
            if not low < self.settings[key] <= high:
                raise PolicyError(source, f"audits.{self.name}.{key}", f"must be in ({low:g}, {high:g}]")
        for key in ("reference_images", "min_images", "min_group_images", "bootstrap"):
            if self.settings[key] < 1:
                raise PolicyError(source, f"audits.{self.name}.{key}", "must be at least 1")
        groups = self.settings["groups"]
        if not all(isinstance(g, str) and g in GROUP_KEYS for g in groups):
            raise PolicyError(source, f"audits.{self.name}.groups",
                              f"expected a list of {', '.join(map(repr, GROUP_KEYS))}")
        data = context.reference_data
        if data and data not in get_plugins().components("datasets") and not Path(data).is_dir():
            raise InputError(f"--reference-data {data}: neither a dataset name nor a folder of images")
        declared = context.reference_distribution or {}
        for spec in self.specs:
            shares = declared.get(spec.name)
            if shares is not None and not sum(float(shares.get(v, 0.0)) for v in spec.values) > 0:
                raise InputError(f"reference distribution: attribute {spec.name!r} has no share for any of its "
                                 f"values ({', '.join(spec.values)})")
        if self.settings["reference"] == "declared":
            for spec in self.specs:
                if spec.reference is None and spec.name not in declared:
                    raise PolicyError(source, f"audits.{self.name}.attributes.{spec.name}.reference",
                                      "reference = \"declared\" needs a declared distribution for every attribute")

    # ------------------------------------------------------------------ references

    def _references(self, clip: Any) -> tuple[dict[str, ReferenceDistribution], dict[str, dict[str, ReferenceDistribution]], dict[str, Any]]:
        """Overall reference per attribute, per-label references (measured only), and a
        description of where they came from."""
        mode = self.settings["reference"]
        declared = self.context.reference_distribution or {}
        data = self.context.reference_data
        if mode == "training" and not data:
            raise _NoReference("reference = \"training\" needs the training data (--reference-data)")
        use_training = mode == "training" or (mode == "auto" and data and not declared)
        overall: dict[str, ReferenceDistribution] = {}
        by_label: dict[str, dict[str, ReferenceDistribution]] = {}
        about: dict[str, Any] = {"mode": mode}
        if use_training:
            store = reference_store_path(self.context.run_dir)
            measured = measure_reference(clip, self.specs, data, datasets=get_plugins().components("datasets"),
                                         images=self.settings["reference_images"], seed=self.settings["seed"],
                                         store=store)
            about.update({"source": "measured", "data": measured.data, "images": measured.images,
                          "stored": measured.path, "reused": measured.reused})
            return measured.overall, measured.by_label, about
        for spec in self.specs:
            if spec.name in declared and mode in ("auto", "declared"):
                overall[spec.name] = ReferenceDistribution.declared(spec.values, declared[spec.name])
            elif spec.reference is not None and mode in ("auto", "declared"):
                overall[spec.name] = ReferenceDistribution.declared(spec.values, spec.reference)
            else:
                overall[spec.name] = ReferenceDistribution.uniform(spec.values)
        about["source"] = sorted({r.source for r in overall.values()})
        return overall, by_label, about

    # ------------------------------------------------------------------ the check

    def check_batch(self, items: Sequence[AuditItem], findings: Sequence[Any]) -> list[Finding]:
        from artengine import clip_for_context

        if not items:
            return [Finding(audit=self.name, outcome="unknown", message="no images to measure")]
        clip = clip_for_context(self.context)
        embeddings = np.stack([np.asarray(item.features["clip"], dtype=np.float32) for item in items])
        if embeddings.ndim != 2 or embeddings.shape[1] != clip.embed_dim:
            return [Finding(audit=self.name, outcome="error",
                            message=f"image embeddings have shape {embeddings.shape}, but CLIP model "
                                    f"{clip.name} has {clip.embed_dim} dimensions")]
        try:
            overall, by_label, about = self._references(clip)
        except _NoReference as exc:
            return [Finding(audit=self.name, outcome="error", message=str(exc))]
        s = self.settings
        rng = np.random.default_rng(s["seed"])
        metas = [item.meta for item in items]

        # Every (attribute, group) comparison first, so Holm covers the whole batch.
        results: dict[str, dict[str, Any]] = {}
        tests: list[tuple[str, str | None, str | None, dict[str, Any]]] = []
        # Group membership once per metadata key, not once per attribute and group.
        members: dict[str, dict[str, np.ndarray]] = {}
        for key in s["groups"]:
            names = np.array(["" if m.get(key) is None else str(m[key]) for m in metas], dtype=str)
            present = np.array([m.get(key) is not None for m in metas], dtype=bool)
            members[key] = {str(group): present & (names == group) for group in sorted(set(names[present]))}
        for spec in self.specs:
            labels, _ = classify(embeddings, class_embeddings(clip, spec), clip.logit_scale, spec.threshold)
            entry: dict[str, Any] = {
                "values": list(spec.values), "threshold": spec.threshold,
                "prompts": {v: list(spec.prompts_for(v)) for v in spec.values},
                "reference_distribution": overall[spec.name].as_dict(),
                "overall": compare_distribution(labels, spec.values, overall[spec.name], rng=rng,
                                                bootstrap=s["bootstrap"]),
            }
            if entry["overall"]["known"] >= s["min_images"]:
                tests.append((spec.name, None, None, entry["overall"]))
            for key in s["groups"]:
                section = GROUP_KEYS[key]
                entry[section] = {}
                for group, mask in members[key].items():
                    own = by_label.get(spec.name, {}).get(group) if key == "label" else None
                    ref = overall[spec.name] if own is None else own
                    comparison = compare_distribution(labels[mask], spec.values, ref, rng=rng, bootstrap=s["bootstrap"])
                    comparison["reference_group"] = group if own is not None else None
                    entry[section][group] = comparison
                    if own is None and key == "label" and group in spec.values:
                        # Images asked to be a value of this attribute (label "circle", attribute
                        # shape) are meant to differ from the whole reference; without training
                        # images of that label there is nothing to compare them with.
                        comparison["untested"] = (f"label {group!r} asks for this {spec.name}; the reference has "
                                                  "no images labelled so")
                    elif comparison["known"] >= s["min_group_images"]:
                        tests.append((spec.name, section, group, comparison))
            results[spec.name] = entry
        adjusted = holm([t[3]["p_value"] for t in tests])
        for (_, _, _, comparison), p_adj in zip(tests, adjusted):
            comparison["p_adjusted"] = p_adj
            comparison["flagged"] = bool(p_adj < s["alpha"] and comparison["tvd"] >= s["min_tvd"])

        model = {"name": clip.name, "weights_sha256": clip.weights_sha256}
        common = {"model": model, "reference": about, "alpha": s["alpha"], "min_tvd": s["min_tvd"],
                  "correction": "holm", "tests": len(tests), "images": len(items)}
        return [self._finding(spec.name, results[spec.name], common) for spec in self.specs]

    def _finding(self, name: str, entry: dict[str, Any], common: dict[str, Any]) -> Finding:
        s = self.settings
        overall = entry["overall"]
        flagged = [("overall", None, overall)] if overall.get("flagged") else []
        for section in GROUP_KEYS.values():
            for group, comparison in entry.get(section, {}).items():
                if comparison.get("flagged"):
                    flagged.append((section, group, comparison))
        charts = [distribution_chart(f"{name} (all {overall['images']} images)", overall)]
        charts += [distribution_chart(f"{name} | {section.removeprefix('by_')} = {group}", c)
                   for section, group, c in flagged if group is not None]
        details = {**common, "attribute": name, **entry, "charts": charts,
                   "flagged": [{"group": section, "name": group, "tvd": c["tvd"], "p_adjusted": c["p_adjusted"],
                                "amplification": c["amplification"]} for section, group, c in flagged]}
        if flagged:
            section, group, c = max(flagged, key=lambda f: f[2]["tvd"])
            amp = c["amplification"]
            share = next(r["share"] for r in c["values"] if r["value"] == amp["value"])
            where = "" if group is None else f" among {section.removeprefix('by_')} {group!r}"
            more = f"; {len(flagged) - 1} more flagged group(s)" if len(flagged) > 1 else ""
            return Finding(audit=self.name, outcome="fail", details=details, message=(
                f"{name}{where}: {amp['value']} is {share * 100:.0f} % of {c['known']} images vs "
                f"{c['values'][[r['value'] for r in c['values']].index(amp['value'])]['reference'] * 100:.0f} % "
                f"in the {c['reference_source']} reference (x{amp['ratio']:.1f}; TVD {c['tvd']:.2f}, "
                f"adjusted p {c['p_adjusted']:.2g}){more}"))
        if overall["known"] < s["min_images"]:
            return Finding(audit=self.name, outcome="unknown", details=details, message=(
                f"{name}: only {overall['known']} of {overall['images']} images classified; "
                f"at least {s['min_images']} are needed to test the distribution"))
        if overall["unknown_fraction"] > s["max_unknown"]:
            return Finding(audit=self.name, outcome="unknown", details=details, message=(
                f"{name}: the classifier is unsure about {overall['unknown_fraction'] * 100:.0f} % of the "
                f"images (more than {s['max_unknown'] * 100:.0f} %); the distribution cannot be trusted"))
        return Finding(audit=self.name, outcome="pass", details=details, message=(
            f"{name}: consistent with the {overall['reference_source']} reference over {overall['known']} "
            f"images (TVD {overall['tvd']:.2f}, adjusted p {overall.get('p_adjusted', 1.0):.2g})"))


class _NoReference(Exception):
    """No reference distribution can be had (an error finding, not a crash)."""


@hookimpl
def artengine_audits() -> list[type[Audit]]:
    return [BiasAudit]
