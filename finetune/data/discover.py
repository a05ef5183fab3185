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
    source: str,
    val_fraction: float = DataConfig.val_fraction,
    seed: int = 0,
    *,
    keep_problems: bool = False,
    max_files: int = DataConfig.max_files,
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
        keep_problems: list what would stop training in `DataSource.problems` instead of
            raising, so that a health report can say everything at once: an empty class folder
            (its class then has no images), fewer than two classes, split folders whose classes
            differ (the classes are then the union of theirs). Defaults to False.
        max_files: listing stops with an error past this many files (a data folder pointed at a
            whole disk by mistake). Defaults to `DataConfig.max_files`.

    Raises:
        FinetuneError: a missing folder, a file, more than `max_files` files, and unless
            `keep_problems`, fewer than two classes, an empty class folder, or split folders
            whose classes differ.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise FinetuneError(f"`val_fraction` must be at least 0 and below 1. Received: val_fraction={val_fraction!r}")
    source = str(source)
    if source.startswith(TFDS_PREFIX):
        return discover_tfds(source, val_fraction, seed)
    if max_files < 1:
        raise FinetuneError(f"`max_files` must be at least 1. Received: max_files={max_files!r}")
    return _discover_folder(source, val_fraction, seed, keep_problems, FileCount(Path(source).expanduser(), max_files))


class FileCount:
    """The files listed so far under `root`, and the bound past which listing stops with an error."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit, self.count = root, limit, 0

    def add(self, count: int, where) -> None:
        self.count += count
        if self.count > self.limit:
            raise FinetuneError(
                f"{self.root} holds more than {self.limit:,} files (listing stopped at {where}). The bound guards "
                f"against a data folder that is a whole disk by mistake. Point at the folder of your images, or raise "
                f"the bound with --max-files (DataConfig.max_files)."
            )


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


def walk_files(folder: Path, count: FileCount | None = None) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by path so that the order is the same everywhere.

    Links to folders are not followed (a link to a folder above it would never end) but listed, so
    that decoding reports them as skipped rather than their images going missing unsaid. With a
    `count`, each folder's files are added to it as they are listed (it raises past its bound).
    """
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not _is_ignored(name)]
        links = [name for name in subdirectories if os.path.islink(os.path.join(directory, name))]
        listed = [Path(directory) / name for name in files + links if not _is_ignored(name)]
        if count is not None:
            count.add(len(listed), directory)
        found += listed
    return sorted(found, key=lambda path: path.as_posix())


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _subfolders(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not _is_ignored(entry.name))


def _discover_folder(source: str, val_fraction: float, seed: int, keep_problems: bool, count: FileCount) -> DataSource:
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
        class_names, splits, skipped = _list_split_folders(root, split_folders, problems, count)
        presplit = True
    else:
        class_names, split, skipped = _list_classes(root, problems, count)
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
    root: Path, split_folders: dict[str, Path], problems: list | None, count: FileCount
) -> tuple[list[str], dict[str, Split], list[dict]]:
    """The classes, splits and skipped files of train/ (and val/, test/), which must hold the same classes.

    With a `problems` list, split folders whose classes differ are a problem, and the classes are
    the union of theirs (each split's labels renumbered into it), so that every image is counted.
    """
    listed, skipped = {}, []
    for split_name in ("train", "val", "test"):
        if split_name in split_folders:
            names, split, split_skipped = _list_classes(split_folders[split_name], problems, count)
            skipped += split_skipped
            listed[split_name] = (names, split)
    class_names = listed["train"][0]
    for split_name, (names, _) in listed.items():
        if names != class_names:
            message = _class_mismatch_message(root, split_folders["train"], class_names, split_folders[split_name], names)
            if problems is None:
                raise FinetuneError(message)
            problems.append({"path": str(split_folders[split_name]), "problem": message})
    union = sorted(set().union(*(names for names, _ in listed.values())))
    splits = {}
    for split_name, (names, split) in listed.items():
        renumber = np.array([union.index(name) for name in names], dtype=np.int64)
        splits[split_name] = Split(split.paths, renumber[split.labels])
    return union, splits, skipped


def _list_classes(
    folder: Path, problems: list | None = None, count: FileCount | None = None
) -> tuple[list[str], Split, list[dict]]:
    """The class subfolders of `folder` and their files, sorted; zero-byte files are skipped here.

    An empty class folder or fewer than two classes raise, or with a `problems` list are added to
    it (the empty folder kept as a class without images).
    """
    class_folders = _subfolders(folder)
    if len(class_folders) < 2:
        message = _too_few_classes_message(folder, class_folders)
        if problems is None:
            raise FinetuneError(message)
        problems.append({"path": str(folder), "problem": message})
    paths, labels, skipped = [], [], []
    for label, class_folder in enumerate(class_folders):
        files = walk_files(class_folder, count)
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
