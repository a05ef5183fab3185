"""Finding images: a data source listed and split into train/val (and test), and the files to predict on.

A data source is a folder with one subfolder per class (optionally under `train/`, `val/`,
`test/`) or `tfds:NAME`. Listing looks at names only (zero-byte files aside): whether a file
is an image is found when it is decoded, by content, not extension.

Example:
>>> data = discover("flowers/")
>>> data.class_names, len(data.splits["train"].paths)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from finetune.config import DataConfig
from finetune.data.decode import file_size
from finetune.data.splits import DataSource, Split, stratified_split
from finetune.data.tfds import TFDS_PREFIX, discover_tfds
from finetune.errors import FinetuneError

# Skipped silently: system files, not the user's images.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
# Folder names that mark a pre-split layout, and the split each stands for.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def discover(
    source: str, val_fraction: float = DataConfig.val_fraction, seed: int = 0, *, keep_problems: bool = False
) -> DataSource:
    """Lists a data source and splits it into train/val (and test when the source has one).

    Args:
        source: a folder with one subfolder per class, or with `train/` (and optionally `val/`,
            `test/`) folders that each hold one subfolder per class; or `tfds:NAME`.
        val_fraction: share of each class held out for validation when there is no val split;
            a class with two or more images always gets at least one. 0 makes no val split.
            Defaults to `DataConfig.val_fraction` (0.2).
        seed: the split depends on it and on the file names only (not on listing order).
            Defaults to 0.
        keep_problems: list an empty class folder in `DataSource.problems` (its class then has
            no images) instead of raising, so that a health report can say everything at once.
            Defaults to False: training cannot learn a class without images.

    Raises:
        FinetuneError: a missing folder, a file, fewer than two classes, an empty class folder
            (unless `keep_problems`), or split folders whose classes differ.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise FinetuneError(f"`val_fraction` must be at least 0 and below 1. Received: val_fraction={val_fraction!r}")
    source = str(source)
    if source.startswith(TFDS_PREFIX):
        return discover_tfds(source, val_fraction, seed)
    return _discover_folder(source, val_fraction, seed, keep_problems)


def list_images(folder) -> list[Path]:
    """Every file under `folder` (recursively, hidden files and folders left out), sorted; a file gives itself.

    Links to folders are listed, not followed (see `walk_files`).

    Whether a file is an image is found when it is decoded (by content, not extension).
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FinetuneError(f"{folder} does not exist. Pass an image file or a folder of images.")
    if folder.is_file():
        return [folder]
    return walk_files(folder)


def walk_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by path so that the order is the same everywhere.

    Links to folders are not followed (a link to a folder above it would never end) but listed, so
    that decoding reports them as skipped rather than their images going missing unsaid.
    """
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not _is_ignored(name)]
        links = [name for name in subdirectories if os.path.islink(os.path.join(directory, name))]
        found += [Path(directory) / name for name in files + links if not _is_ignored(name)]
    return sorted(found, key=lambda path: path.as_posix())


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _subfolders(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not _is_ignored(entry.name))


def _discover_folder(source: str, val_fraction: float, seed: int, keep_problems: bool) -> DataSource:
    root = Path(source).expanduser()
    layout_help = f"Expected {root}/<class name>/<images>, e.g. {root}/cat/1.jpg and {root}/dog/1.jpg."
    if not root.exists():
        raise FinetuneError(f"The data folder {root} does not exist. {layout_help} Check the path.")
    if not root.is_dir():
        raise FinetuneError(f"{root} is a file, not a folder. Pass the folder that holds one subfolder per class.")
    folders = _subfolders(root)
    split_folders = {
        SPLIT_FOLDERS[folder.name.lower()]: folder for folder in folders if folder.name.lower() in SPLIT_FOLDERS
    }
    problems = [] if keep_problems else None
    if "train" in split_folders:
        class_names, splits, skipped = _list_split_folders(root, split_folders, problems)
        presplit = True
    else:
        class_names, split, skipped = _list_classes(root, problems)
        splits = {"train": split}
        presplit = False
    if "val" not in splits and val_fraction > 0:
        splits["train"], splits["val"] = stratified_split(splits["train"], class_names, val_fraction, seed)
    return DataSource(
        name=root.resolve().name or "data",
        root=str(root),
        class_names=class_names,
        splits=splits,
        skipped=skipped,
        presplit=presplit,
        problems=problems or [],
    )


def _list_split_folders(
    root: Path, split_folders: dict[str, Path], problems: list | None
) -> tuple[list[str], dict[str, Split], list[dict]]:
    """The classes, splits and skipped files of train/ (and val/, test/), which must hold the same classes."""
    class_names, splits, skipped = None, {}, []
    for split_name in ("train", "val", "test"):
        if split_name not in split_folders:
            continue
        names, split, split_skipped = _list_classes(split_folders[split_name], problems)
        skipped += split_skipped
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise FinetuneError(
                _class_mismatch_message(root, split_folders["train"], class_names, split_folders[split_name], names)
            )
        splits[split_name] = split
    return class_names, splits, skipped


def _list_classes(folder: Path, problems: list | None = None) -> tuple[list[str], Split, list[dict]]:
    """The class subfolders of `folder` and their files, sorted; zero-byte files are skipped here.

    An empty class folder raises, or with a `problems` list is added to it and kept as a class without images.
    """
    class_folders = _subfolders(folder)
    if len(class_folders) < 2:
        raise FinetuneError(_too_few_classes_message(folder, class_folders))
    paths, labels, skipped = [], [], []
    for label, class_folder in enumerate(class_folders):
        files = walk_files(class_folder)
        usable = []
        for path in files:
            if file_size(path) == 0:
                skipped.append({"path": str(path), "reason": "empty file (0 bytes)"})
            else:
                usable.append(str(path))
        if not usable:
            what = f"only {len(files)} empty files" if files else "no files"
            message = (
                f"The class folder {class_folder} has {what}, so the class {class_folder.name!r} has no images. "
                f"Add images to it or remove the folder."
            )
            if problems is None:
                raise FinetuneError(message)
            problems.append({"path": str(class_folder), "problem": message})
        paths += usable
        labels += [label] * len(usable)
    return [folder.name for folder in class_folders], Split(paths, np.array(labels, dtype=np.int64)), skipped


def _too_few_classes_message(folder: Path, class_folders: list[Path]) -> str:
    loose = [path for path in folder.iterdir() if path.is_file() and not _is_ignored(path.name)]
    found = (
        f"found {len(class_folders)} ({', '.join(f.name for f in class_folders)})" if class_folders else "found none"
    )
    hint = (
        f" The {len(loose)} files directly in {folder} are not in a class folder; "
        f"move them into one subfolder per class."
        if loose
        else ""
    )
    return (
        f"{folder} needs at least two class subfolders (one per class, holding that class's images); "
        f"{found}.{hint} Example: {folder}/cat/1.jpg, {folder}/dog/1.jpg."
    )


def _class_mismatch_message(root, train_folder, train_classes, other_folder, other_classes) -> str:
    missing = sorted(set(train_classes) - set(other_classes))
    extra = sorted(set(other_classes) - set(train_classes))
    details = []
    if missing:
        details.append(f"{other_folder.name}/ lacks {', '.join(missing)}")
    if extra:
        details.append(f"{other_folder.name}/ has {', '.join(extra)}, which {train_folder.name}/ lacks")
    return (
        f"The split folders of {root} have different classes: {'; '.join(details)}. Every split folder "
        f"(train/, val/, test/) needs the same class subfolders: add the missing ones or remove the extra ones."
    )
