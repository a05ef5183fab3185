"""The model zoo: backbone specs as data, building backbones, their preprocessing and weights.

- `spec.py`: `BackboneSpec`, what one backbone is, as data;
- `presets.py`: the built-in specs; `registry.py`: `register`, `get_spec`, `list_specs`;
- `build.py`: building a backbone, its stages and freeze groups, parameter counts;
- `weights.py`: where weights come from (local cache, Keras download, torchvision import, a file);
- `preprocessing.py`: the `Preprocess` layer; `mobilenet_v2_torchvision.py`,
  `torchvision_import.py` and `torch_checkpoint.py`: torchvision's MobileNetV2 without torch.

Importing the zoo touches no network: weights are resolved only when a backbone is built
with `weights="imagenet"`.
"""

from finetune.zoo.build import (
    build_backbone,
    build_backbone_with_source,
    count_parameters,
    group_of_layer,
    layers_of_group,
    resolve_constructor,
    stage_outputs,
    zoo_table,
)
from finetune.zoo.preprocessing import Preprocess
from finetune.zoo.registry import get_spec, list_specs, register
from finetune.zoo.spec import BackboneSpec
from finetune.zoo.weights import is_random_initialisation

__all__ = [
    "BackboneSpec",
    "Preprocess",
    "build_backbone",
    "build_backbone_with_source",
    "count_parameters",
    "get_spec",
    "group_of_layer",
    "is_random_initialisation",
    "layers_of_group",
    "list_specs",
    "register",
    "resolve_constructor",
    "stage_outputs",
    "zoo_table",
]
