"""A data set's health report: what `finetune check-data DATA_DIR` prints before any training.

Every image is decoded exactly as training would decode it, so the report lists every file a
run would skip, with the reason. It also counts images per class and split, measures class
imbalance (and whether class weights would be used), finds exact duplicates across splits
(which make validation scores look better than they are) and summarises sizes and modes.
Problems that would stop training (an empty class folder, a class none of whose training images
can be read) are findings here, listed with the rest, not an error that hides them.

Example:
>>> print(format_health_report(health_report("flowers/")))
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
from pathlib import Path

import numpy as np

from finetune.config import DataConfig
from finetune.data.decode import BadImageError, decode_image, decode_many, unreadable_reason
from finetune.data.discover import discover
from finetune.data.pipeline import CLASS_WEIGHT_THRESHOLD, class_weights
from finetune.data.tfds import TFDS_PREFIX, tfds_items

# Entries of a long list printed by `format_health_report`; the report dict has all of them.
MAX_LISTED = 20


def health_report(
    source: str,
    val_fraction: float = DataConfig.val_fraction,
    seed: int = 0,
    max_megapixels: float = DataConfig.max_megapixels,
    *,
    max_files: int = DataConfig.max_files,
) -> dict:
    """Decodes every image of a data source and reports on it.

    Args:
        source: a folder (see `finetune.data.discover`) or `tfds:NAME`.
        val_fraction: as in training, so that the splits reported are the splits trained on.
            Defaults to `DataConfig.val_fraction` (0.2).
        seed: as in training. Defaults to 0.
        max_megapixels: larger images are reported as skipped. Defaults to
            `DataConfig.max_megapixels` (89).
        max_files: listing stops with an error past this many files. Defaults to
            `DataConfig.max_files`.

    Returns:
        A JSON-ready dict: source, name, presplit, class_names, counts ({split: {class: readable
        images}}), totals, imbalance_ratio (largest / smallest train class; None when a class
        has no readable training image), class_weights ({class: weight} or None) and
        class_weights_apply, skipped ([{"path", "reason"}]), duplicates (pairs across splits:
        [{"paths": [a, b], "splits": [split_a, split_b], "sha1"}]), duplicates_within_splits (extra
        copies inside one split), image_size ({min,max}_{width,height}, or None), modes and formats
        ({name: count}), problems ([{"path", "problem"}]: what would stop `finetune train`, with
        the fix).

    Raises:
        FinetuneError: the data source cannot be listed (see `discover`; an empty class folder,
            fewer than two classes and split folders with different classes are problems of the
            report instead).
    """
    data = discover(source, val_fraction=val_fraction, seed=seed, keep_problems=True, max_files=max_files)
    readable, skipped = _inspect_splits(data, max_megapixels)
    counts = {split_name: {name: 0 for name in data.class_names} for split_name in data.splits}
    for split_name, _, label, _ in readable:
        counts[split_name][data.class_names[label]] += 1
    train_counts = np.array(list(counts["train"].values()))
    train_labels = [label for split_name, _, label, _ in readable if split_name == "train"]
    weights = class_weights(train_labels, len(data.class_names), CLASS_WEIGHT_THRESHOLD)
    facts = [record[3] for record in readable]
    duplicates, within = _duplicates(readable)
    return {
        "source": data.root,
        "name": data.name,
        "presplit": data.presplit,
        "val_fraction": val_fraction,
        "seed": seed,
        "class_names": list(data.class_names),
        "counts": counts,
        "totals": {split_name: sum(by_class.values()) for split_name, by_class in counts.items()},
        "imbalance_ratio": float(train_counts.max() / train_counts.min()) if train_counts.size and train_counts.min() > 0 else None,
        "class_weight_threshold": CLASS_WEIGHT_THRESHOLD,
        "class_weights_apply": weights is not None,
        "class_weights": {data.class_names[k]: v for k, v in weights.items()} if weights else None,
        "skipped": skipped,
        "duplicates": duplicates,
        "duplicates_within_splits": within,
        "image_size": (
            {
                "min_width": min(f["width"] for f in facts),
                "max_width": max(f["width"] for f in facts),
                "min_height": min(f["height"] for f in facts),
                "max_height": max(f["height"] for f in facts),
            }
            if facts
            else None
        ),
        "modes": dict(sorted(collections.Counter(f["mode"] for f in facts).items())),
        "formats": dict(sorted(collections.Counter(str(f["format"]) for f in facts).items())),
        "problems": list(data.problems) + _unlearnable_classes(data, counts["train"]),
    }


def _unlearnable_classes(data, train_counts: dict[str, int]) -> list[dict]:
    """Classes with training images listed but none readable: `finetune train` stops on them."""
    listed = collections.Counter(int(label) for label in data.splits["train"].labels)
    problems = []
    for label, name in enumerate(data.class_names):
        if listed[label] and not train_counts[name]:
            folder = Path(data.splits["train"].paths[list(data.splits["train"].labels).index(label)]).parent
            problems.append({"path": str(folder), "problem": (
                f"The class {name!r} has no readable images in the train split: all {listed[label]} are skipped "
                f"(see Skipped files). Replace them with images that open, or remove the class folder."
            )})
    return problems


def _inspect_splits(data, max_megapixels: float) -> tuple[list, list[dict]]:
    """Every image of every split decoded: (readable [(split, path, label, facts)], skipped [{"path", "reason"}])."""
    skipped = list(data.skipped)
    readable = []
    for split_name, split in data.splits.items():
        if data.root.startswith(TFDS_PREFIX):
            items = tfds_items(data.root, split.paths)
        else:
            items = enumerate(split.paths)
        results = decode_many(items, lambda item: _inspect(item, max_megapixels), total=len(split.paths))
        for position, result in results:
            path = split.paths[position]
            if isinstance(result, BadImageError):
                skipped.append({"path": path, "reason": result.reason})
            else:
                readable.append((split_name, path, int(split.labels[position]), result))
    return readable, skipped


def _inspect(source, max_megapixels: float) -> dict:
    """Facts about one image (format, mode, width, height, sha1 of its bytes); raises BadImageError."""
    if isinstance(source, (str, os.PathLike)):
        try:
            source = Path(source).read_bytes()
        except OSError as error:
            raise BadImageError(unreadable_reason(source, error)) from None
    _, facts = decode_image(source, max_megapixels)
    return {**facts, "sha1": hashlib.sha1(source).hexdigest()}


def _duplicates(readable: list) -> tuple[list[dict], int]:
    """Pairs of byte-identical files in different splits, and the count of extra copies within a split."""
    groups = collections.defaultdict(list)
    for split_name, path, _, facts in readable:
        groups[facts["sha1"]].append((split_name, path))
    pairs, within = [], 0
    for sha1, members in sorted(groups.items(), key=lambda item: item[1]):
        per_split = collections.Counter(split_name for split_name, _ in members)
        within += sum(count - 1 for count in per_split.values())
        for (split_a, path_a), (split_b, path_b) in itertools.combinations(members, 2):
            if split_a != split_b:
                pairs.append({"paths": [path_a, path_b], "splits": [split_a, split_b], "sha1": sha1})
    return pairs, within


def format_health_report(report: dict) -> str:
    """The report as a readable text table, for `finetune check-data`."""
    root = report["source"]
    lines = [f"Data set: {report['name']} ({root})"]
    if report["presplit"]:
        lines.append("Layout: split folders (" + ", ".join(f"{name}/" for name in report["counts"]) + ")")
    else:
        lines.append(
            f"Layout: one folder per class, split with val_fraction={report['val_fraction']:g}, seed={report['seed']}"
        )
    total_readable = sum(report["totals"].values())
    lines.append(
        f"Images: {total_readable} readable, {len(report['skipped'])} skipped, {len(report['class_names'])} classes"
    )
    if report["problems"]:
        lines += ["", f"Problems ({len(report['problems'])}; `finetune train` stops on these):"]
        lines += [f"  {_short(item['path'], root)}: {item['problem']}" for item in report["problems"]]
    lines.append("")

    splits = list(report["counts"])
    width = max([len("class"), len("total")] + [len(name) for name in report["class_names"]])
    header = f"{'class':<{width}}" + "".join(f"{name:>8}" for name in splits) + f"{'total':>8}"
    lines += [header, "-" * len(header)]
    for name in report["class_names"]:
        row = [report["counts"][split][name] for split in splits]
        lines.append(f"{name:<{width}}" + "".join(f"{count:>8}" for count in row) + f"{sum(row):>8}")
    totals = [report["totals"][split] for split in splits]
    lines.append(f"{'total':<{width}}" + "".join(f"{count:>8}" for count in totals) + f"{sum(totals):>8}")
    lines.append("")

    ratio = report["imbalance_ratio"]
    threshold = report["class_weight_threshold"]
    if ratio is None:
        lines.append("Imbalance: at least one class has no readable training image (see the table).")
    elif report["class_weights_apply"]:
        weights = ", ".join(f"{name} {weight:.2f}" for name, weight in report["class_weights"].items())
        lines.append(
            f"Imbalance (train, largest/smallest class): {ratio:.2f}x > {threshold:g}x: class weights apply ({weights})"
        )
    else:
        lines.append(
            f"Imbalance (train, largest/smallest class): {ratio:.2f}x <= {threshold:g}x: no class weights needed"
        )
    size = report["image_size"]
    if size:
        widths, heights = f"{size['min_width']}..{size['max_width']}", f"{size['min_height']}..{size['max_height']}"
        lines.append(f"Image sizes: width {widths} px, height {heights} px")
    lines.append("Modes: " + (", ".join(f"{mode} {count}" for mode, count in report["modes"].items()) or "none"))
    lines.append("Formats: " + (", ".join(f"{name} {count}" for name, count in report["formats"].items()) or "none"))

    if report["skipped"]:
        lines += ["", f"Skipped files ({len(report['skipped'])}; training skips them too):"]
        lines += [f"  {_short(item['path'], root)}: {item['reason']}" for item in report["skipped"][:MAX_LISTED]]
        lines += _more(len(report["skipped"]))
    if report["duplicates"]:
        count = len(report["duplicates"])
        lines += [
            "",
            f"Identical files in two splits ({count} pair{'s' if count > 1 else ''}; "
            f"they inflate validation and test scores):",
        ]
        for pair in report["duplicates"][:MAX_LISTED]:
            (path_a, path_b), (split_a, split_b) = pair["paths"], pair["splits"]
            lines.append(f"  {_short(path_a, root)} ({split_a}) == {_short(path_b, root)} ({split_b})")
        lines += _more(len(report["duplicates"]))
    else:
        lines += ["", "No identical files across splits."]
    if report["duplicates_within_splits"]:
        lines.append(f"Extra copies of identical files within a split: {report['duplicates_within_splits']}")
    return "\n".join(lines)


def _short(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root) if not root.startswith(TFDS_PREFIX) else path
    except ValueError:  # another drive on Windows
        return path


def _more(count: int) -> list[str]:
    return [f"  ... and {count - MAX_LISTED} more (all of them with --json)"] if count > MAX_LISTED else []
