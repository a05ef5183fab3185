"""The one forward pass of prediction: a run's model as a graph of source images -> probabilities, cached.

`graph_of` builds (once per run, mode and combine: `build_graph`) the model, which puts an ensemble's member outputs beside its own, cuts and combines the views of a
test-time augmentation mode, and applies a calibrated model's temperature after the average (the
model is calibrated as a whole); `forward` runs it batch by batch. `finetune.inference` and the
app go through here, so that all give the same probabilities.
"""

from __future__ import annotations

import sys
import weakref

import numpy as np

from augment.tta_modes import COMBINES
from finetune.errors import FinetuneError, check_choice
from finetune.run import Run


# Built graphs of each run by (mode, combine): building one and tracing its predict function
# takes seconds, which the app would pay on every upload. Dropped when the run is.
_GRAPHS: dict[int, dict] = {}


def graph_of(run: Run, mode: str, combine: str):
    """The model of one forward pass for `run`: source images -> [probabilities, each member's probabilities]."""
    check_choice("tta_combine", combine, COMBINES)
    key = id(run)
    if key not in _GRAPHS:
        _GRAPHS[key] = {}
        weakref.finalize(run, _GRAPHS.pop, key, None)
    graphs = _GRAPHS[key]
    if (mode, combine) not in graphs:
        graphs[(mode, combine)] = build_graph(run, mode, combine)
    return graphs[(mode, combine)]


def is_keras_model(model) -> bool:
    keras = sys.modules.get("keras")  # a Keras model exists only once Keras is imported: no import for the others
    return keras is not None and isinstance(model, keras.Model)


def build_graph(run: Run, mode: str, combine: str):
    """`run.model`, with an ensemble's member outputs beside its own and the mode's views cut and combined.

    An export in another format (TFLite, ONNX, SavedModel) is its own graph: it takes TTA only
    built in (`finetune export --tta`).
    """
    model = run.model
    if not is_keras_model(model):
        if mode != "none":
            raise FinetuneError(
                f"Test-time augmentation needs a Keras model; {run.directory} holds a {type(model).__name__}. "
                f"Export with `finetune export --tta {mode}` to build it in, or pass --tta none. Received: tta={mode!r}"
            )
        return model
    import keras

    from finetune.temperature import LAYER_NAME, Temperature, split_temperature

    # The temperature applies to what is finally predicted: after the members' and views' average.
    model, temperature = split_temperature(model)
    members = _member_outputs(model)
    core = keras.Model(model.inputs, [model.outputs[0], *members], name=f"{model.name}_members") if members else model
    if mode == "none":
        inputs = core.inputs
        combined = _as_list(core.outputs) if members else [core.outputs[0]]
    else:
        from augment.tta import TTAAverage, TTACrops

        crops = TTACrops(mode, run.image_size, name="tta_crops")
        inputs = keras.Input((crops.source_size, crops.source_size, model.input_shape[-1]), name="image")
        per_view = _as_list(core(_structured(core, crops(inputs))))
        # augment.tta.build_tta_model's combine, for each output: the members' views are combined as the ensemble's.
        combined = [TTAAverage(crops.views, combine, name=f"tta_average_{index}")(output)
                    for index, output in enumerate(per_view)]
    if temperature is not None:
        combined[0] = Temperature(temperature, name=LAYER_NAME)(combined[0])
    if mode == "none" and temperature is None and not members:
        return model
    return keras.Model(inputs, combined if len(combined) > 1 else combined[0], name=f"{model.name}_tta_{mode}")


def _member_outputs(model) -> list:
    """The members' probabilities inside an ensemble's own graph ([] for one model).

    `finetune.ensemble.build_ensemble` wraps member k as layer `member_k` and averages them in
    layer "average"; its inputs are the members' outputs, so one pass gives them all.
    """
    members = [layer for layer in model.layers if layer.name.startswith("member_")]
    if len(members) < 2 or "average" not in {layer.name for layer in model.layers}:
        return []
    outputs = model.get_layer("average").input
    return list(outputs) if isinstance(outputs, (list, tuple)) and len(outputs) == len(members) else []


def _structured(model, batch):
    """`batch` in the structure the model was built with (`[image]` or `image`), which Keras warns about otherwise."""
    return [batch] if isinstance(model.input, (list, tuple)) else batch


def _as_list(outputs) -> list:
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def forward(graph, sources: np.ndarray, *, per_pass: int, verbose: int = 0) -> list[np.ndarray]:
    """The graph's outputs for every source image, `per_pass` images per forward pass.

    Keras's `predict` sets up a data pipeline on every call (about 0.2 s, measured), which one
    upload would pay each time; `predict_on_batch` does not. `predict` is used for its progress bar.
    """
    if not is_keras_model(graph):  # an export's predictor
        return [np.asarray(graph.predict(sources.astype(np.float32), batch_size=per_pass, verbose=verbose))]
    if verbose:
        outputs = graph.predict(_structured(graph, sources.astype(np.float32)), batch_size=per_pass, verbose=verbose)
        return [np.asarray(output) for output in _as_list(outputs)]
    batches = []
    for start in range(0, len(sources), per_pass):
        batch = sources[start : start + per_pass].astype(np.float32)
        batches.append([np.asarray(output) for output in _as_list(graph.predict_on_batch(_structured(graph, batch)))])
    return [np.concatenate(outputs) for outputs in zip(*batches)]


def views_of(graph, sources: np.ndarray) -> np.ndarray:
    """The views the graph cut of each source, uint8 [N, views, S, S, 3] (its own crop layer: the same pixels)."""
    if not is_keras_model(graph) or "tta_crops" not in {layer.name for layer in graph.layers}:
        return sources[:, None]
    import keras

    crops = graph.get_layer("tta_crops")
    views = keras.ops.convert_to_numpy(crops(sources.astype(np.float32)))
    views = views.reshape(len(sources), crops.views, *views.shape[1:])
    return np.clip(np.rint(views), 0, 255).astype(np.uint8)
