"""The 1000 ImageNet class names, in the order of every ImageNet classifier's outputs, offline.

tensorflow-datasets ships both halves: the WordNet ids in class order
(`datasets/imagenet2012/labels.txt`) and the English names in the same order
(`IMAGENET_LABELS_LIST` in `datasets/siscore/labels.py`). The files are read as text (the
Python file parsed, never imported), so importing tensorflow-datasets is not needed.

    names = imagenet_class_names()
    names[281]   # 'tabby, tabby cat'
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from finetune.errors import FinetuneError

_SYNSETS_FILE = ("datasets", "imagenet2012", "labels.txt")
_NAMES_FILE = ("datasets", "siscore", "labels.py")
_NAMES_VARIABLE = "IMAGENET_LABELS_LIST"


def _tensorflow_datasets_file(parts: tuple[str, ...]) -> Path:
    spec = importlib.util.find_spec("tensorflow_datasets")
    locations = spec.submodule_search_locations if spec is not None else None
    for location in locations or ():
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    raise FinetuneError(
        f"The ImageNet class names come from tensorflow-datasets, but {'/'.join(parts)} was not found "
        "in it. Install or upgrade it: `pip install -U tensorflow-datasets`."
    )


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet ids ("n01440764", ...) in class order."""
    path = _tensorflow_datasets_file(_SYNSETS_FILE)
    synsets = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(synsets) != 1000:
        raise FinetuneError(f"{path} lists {len(synsets)} ImageNet classes instead of 1000.")
    return synsets


@functools.lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    path = _tensorflow_datasets_file(_NAMES_FILE)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == _NAMES_VARIABLE for target in node.targets
        ):
            names = ast.literal_eval(node.value)
            if len(names) != 1000:
                raise FinetuneError(f"{path} lists {len(names)} ImageNet class names instead of 1000.")
            return tuple(str(name) for name in names)
    raise FinetuneError(f"{path} has no {_NAMES_VARIABLE}; upgrade tensorflow-datasets.")


def imagenet_class_names() -> list[str]:
    """The 1000 English ImageNet class names in class order, e.g. index 281 is "tabby, tabby cat".

    Each name lists the WordNet synonyms, most common first; `name.split(",")[0]` is a short
    label. Two names occur twice in ImageNet itself ("crane" the bird and the machine, "maillot").
    """
    return list(_class_names())
