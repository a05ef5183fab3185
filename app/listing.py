"""The models the app offers: where to look, what is there, and the sidebar's facts about each.

A run is a directory with model.keras (as `finetune train` writes it); an export is a directory
with export.json (as `finetune export` writes it). Both are read with `finetune.load_run`,
which reads only their JSON files here: a model is loaded when chosen.

Example:
>>> entries, problems = find_models(models_dir_from([], os.environ))
>>> entries[0].labels, entries[0].recorded_tta
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
from pathlib import Path

import finetune
import finetune.inference
from finetune.run import (
    CONFIG_FILE,
    CONFUSION_FILE,
    DEFAULT_MODELS_DIR,  # noqa: F401  public here: the app's defaults are finetune's
    EXPORT_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODELS_DIR_VARIABLE,  # noqa: F401
    find_model_directories,
    honest_accuracy,
    load_run,
    models_dir,
    read_json,
)

MAKE_A_MODEL = "Make a model with `make demo` (trains on the bundled sample) or `finetune train DATA_DIR`."


def models_dir_from(argv: list[str], environ) -> Path:
    """The folder to list models from: `--models-dir DIR`, else $FINETUNE_MODELS_DIR, else models/.

    `argv` are the arguments after `streamlit run app/streamlit_app.py --`; unknown ones are ignored.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--models-dir", default=None)
    known, _ = parser.parse_known_args(argv)
    return models_dir(known.models_dir, environ)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """What the sidebar shows of one model; `path` is what `finetune.load_run` accepts."""

    path: str
    name: str
    kind: str  # "run", "ensemble" (an export of several members) or "export" (of one)
    labels: tuple[str, ...]
    image_size: int
    backbone: str | None
    strategy: str | None
    members: tuple[str, ...]
    accuracy: float | None
    date: str | None
    modified: float  # the model file's modification time: a new model in the same place reloads
    tta: str | None = None  # an export's built-in TTA mode
    recorded_tta: str = "none"  # the mode training chose on validation data: what `finetune predict` uses
    format: str = "keras"
    accuracy_kind: str = "Validation accuracy"  # or "Cross-validated accuracy" (a head fit on the validation split)


def find_models(models_dir) -> tuple[list[ModelEntry], list[dict]]:
    """The runs and exported ensembles under `models_dir` (two levels deep), newest first, and the unusable ones.

    Returns:
        (entries, problems): `problems` are {"path", "reason"} for candidates that are not
        usable, so that the app can say why a model it should list is missing; a model that is,
        or holds, a link to elsewhere is one of them (`link_out_of_place`), never an entry.
    """
    entries, problems = [], []
    try:
        candidates = find_model_directories(Path(models_dir))
    except OSError as error:  # a folder we may not read
        return [], [{"path": str(models_dir), "reason": f"cannot be listed ({error})"}]
    for candidate in candidates:
        link = link_out_of_place(Path(models_dir), candidate)
        if link:
            problems.append({"path": str(candidate), "reason": link})
            continue
        try:
            entries.append(describe(load_run(candidate), candidate))
        except finetune.FinetuneError as error:
            problems.append({"path": str(candidate), "reason": str(error)})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # hand-edited JSON of the wrong shape
            problems.append({"path": str(candidate), "reason": f"{type(error).__name__}: {error}"})
    entries.sort(key=lambda entry: (-entry.modified, entry.name))
    return entries, problems


# The files of a model directory that the app reads, besides an export's artefact.
_SERVED_FILES = (MODEL_FILE, EXPORT_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE, CONFUSION_FILE)


def link_out_of_place(models_dir: Path, candidate: Path) -> str | None:
    """Why the app must not serve `candidate`: it, or a file it holds, is a link to elsewhere; None when it is in place.

    The app serves what lies in its models folder, as it lies there: a link to a folder outside
    it (or to a run of its own, which would be listed twice) and a model file linked in from
    elsewhere are not served. A models folder that is itself a link is fine.
    """
    where = models_dir.resolve() / candidate.relative_to(models_dir)
    paths = [candidate] + [candidate / name for name in _SERVED_FILES if (candidate / name).exists()]
    export = candidate / EXPORT_FILE
    if export.is_file():
        try:
            artefact = str(read_json(export).get("artefact") or "")
        except (finetune.FinetuneError, OSError, AttributeError):
            artefact = ""  # load_run says what is wrong with it
        # A name that is not a file of its own folder: load_run refuses it, with the reason.
        if Path(artefact).name == artefact not in ("", ".", "..") and (candidate / artefact).exists():
            paths.append(candidate / artefact)
    for path in paths:
        target = path.resolve()
        if target != where / path.relative_to(candidate):
            return (
                f"{path} is a link to {target}: the app serves only what lies in its models folder {models_dir}. "
                "Move or copy the model into it."
            )
    return None


def describe(run, path) -> ModelEntry:
    """The sidebar's facts about a loaded `Run`: labels, backbone, strategy, members, accuracy, date."""
    config, metrics = dict(run.config or {}), dict(run.metrics or {})
    directory = Path(path)
    export = config.get("export") if isinstance(config.get("export"), dict) else None
    if export is not None:
        return _describe_export(run, directory, export)
    model_file = directory / MODEL_FILE
    modified = model_file.stat().st_mtime if model_file.exists() else 0.0
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    accuracy, kind = honest_accuracy(metrics)
    accuracy_kind = _ACCURACY_LABELS.get(kind, "Validation accuracy")
    if kind == "cross-validated" and metrics.get("cv_images"):
        accuracy_kind += f" ({metrics['cv_images']} images)"
    return ModelEntry(
        path=str(directory),
        name=directory.name,
        kind="run",
        labels=tuple(run.labels),
        image_size=int(run.image_size),
        backbone=model.get("backbone"),
        strategy=_text(metrics.get("strategy") or config.get("strategy")),
        members=(),
        accuracy=float(accuracy) if accuracy is not None else None,
        accuracy_kind=accuracy_kind,
        date=_date(config.get("created"), modified),
        modified=modified,
        tta=None,
        recorded_tta=finetune.inference.recorded_tta(run),
    )


# The sidebar's names of `finetune.run.honest_accuracy`'s kinds.
_ACCURACY_LABELS = {"validation": "Validation accuracy", "cross-validated": "Cross-validated accuracy",
                    "validation, not held out": "Validation accuracy (not held out)"}


def _describe_export(run, directory: Path, export: dict) -> ModelEntry:
    artefact = directory / str(export.get("artefact", MODEL_FILE))
    modified = artefact.stat().st_mtime if artefact.exists() else (directory / EXPORT_FILE).stat().st_mtime
    members = [member if isinstance(member, dict) else {"path": str(member)} for member in export.get("members") or []]
    backbone, strategy = None, None
    for source in export.get("source_runs") or []:
        try:  # the runs the export came from say which backbone and strategy; they may be gone
            source_run = load_run(source)
        except finetune.FinetuneError:
            continue
        backbone = (source_run.config.get("model") or {}).get("backbone")
        strategy = _text(source_run.metrics.get("strategy") or source_run.config.get("strategy"))
        break
    return ModelEntry(
        path=str(directory),
        name=directory.name,
        kind="ensemble" if len(members) > 1 else "export",
        labels=tuple(run.labels),
        image_size=int(run.image_size),
        backbone=backbone,
        strategy=strategy,
        members=tuple(_member_name(member) for member in members),
        accuracy=None,  # an export records its parity with the ensemble, not an accuracy of its own
        date=_date(export.get("created"), modified),
        modified=modified,
        tta=export.get("tta") or None,
        format=str(export.get("format", "keras")),
    )


def _text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("used") or value.get("strategy") or value.get("name")
    return str(value) if value else None


def _date(created, modified: float) -> str | None:
    if created:
        return str(created).replace("T", " ")[:16]
    return datetime.datetime.fromtimestamp(modified).strftime("%Y-%m-%d %H:%M") if modified else None


def _member_name(member: dict) -> str:
    """"run-a" for a run's best model, "run-a/snapshot_2.keras" for a snapshot; with its accuracy when known."""
    path = Path(str(member.get("path", "")))
    name = Path(str(member.get("run") or path.parent)).name
    if path.name and path.name != MODEL_FILE:
        name = f"{name}/{path.name}"
    if member.get("val_accuracy") is not None:
        name += f" ({float(member['val_accuracy']):.1%})"
    return name


def tta_support(entry: ModelEntry | None = None) -> tuple[bool, str]:
    """(available, why not) for the app's TTA selector: an export with TTA built in takes no more."""
    if entry is not None and entry.tta:
        return False, f"This export averages {entry.tta} views inside the model already."
    if entry is not None and entry.format != "keras":
        # finetune.inference cuts the views inside a Keras graph; other formats take whole images.
        return False, (f"Test-time augmentation needs a Keras model; this export is {entry.format}. "
                       "Export with `finetune export --tta MODE` to build the views in.")
    return True, ""
