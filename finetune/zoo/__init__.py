"""The model zoo: backbone specs as data, building backbones, and their preprocessing.

`finetune.zoo.weights` (weight download, local files, imports) is imported only when weights
are asked for, so listing and inspecting specs never touches the network.
"""

from finetune.zoo.preprocessing import Preprocess
from finetune.zoo.specs import (
    BackboneSpec,
    build_backbone,
    build_backbone_with_source,
    count_parameters,
    get_spec,
    group_of_layer,
    is_random_initialisation,
    layers_of_group,
    list_specs,
    register,
    resolve_constructor,
    stage_outputs,
    zoo_table,
)

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
