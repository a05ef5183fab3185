"""Snapshot ensembles vs one model vs independent runs, and the accuracy TFLite quantisation keeps.

The setting is finetune's: MobileNetV2 (ImageNet weights, imported offline), the top freeze groups
(block_16 and Conv_1) finetuned together with a head that starts from the logistic regression fit
on cached features, Adam with the backbone at 1/10 of the head's rate. To stay affordable on two
shared CPU cores the frozen part of the backbone runs once: its output maps (the input of
block_16) are cached, and every arm trains the top blocks and the head on them (no augmentation).
At the same total epochs E, per seed:

    single          one model, cosine annealing over E epochs
    snapshot Mx rR  M cosine cycles of E/M epochs restarting at R x the rate (Huang et al. 2017);
                    the ensemble of the M end-of-cycle snapshots (the last one is the final model)
    head            the logistic-regression head on frozen features alone (stage 1 of training)
    X+head          arm X with that head as one more member (a different kind of model, for free)
    stagehead       the head of finetune's linear strategies: the best of heads on single stages and
                    means of 2-3 of them, chosen by cross-validation on train+val (finetune.stages)
    X+stagehead     arm X with the stage head as one more member
    independent M   M models with different seeds and data orders, E/M epochs each (same budget)
    independent full M models of E epochs each (M x the budget: the upper bound)
    bagged M        as independent M, each on a bootstrap sample of the training set (cheap diversity)

Then the divergence guard against SGD with momentum at a high rate, and the snapshot ensemble
exported to Keras and TFLite (none, float16, dynamic range), each evaluated on the test split.

    python benchmarks/bench_ensembles.py [--sets textures fashion_mnist] [--image-size 128] [--epochs 15] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import datasets  # noqa: E402
from common import save_results  # noqa: E402

BACKBONE = "mobilenet_v2_torchvision"
LEARNING_RATE = 1e-3
BACKBONE_MULTIPLIER = 0.1
BATCH_SIZE = 32


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SETS = {
    "textures": lambda: datasets.textures(),
    "fashion_mnist": lambda: datasets.fashion_mnist(),
    "digits": lambda: datasets.digits(),
    # More data: finetuning moves further from the linear head, so its members can differ more.
    "fashion_mnist_300": lambda: datasets.fashion_mnist(per_class_train=300, per_class_val=50),
    "digits_100": lambda: datasets.digits(per_class_train=100, per_class_val=20),
}


def prepare(set_name: str, image_size: int, unfreeze_groups: int = 2) -> dict:
    """Loads the splits, caches the frozen part's output maps, fits the starting head."""
    import keras

    from finetune import data as data_module
    from finetune import zoo
    from finetune.head import fit_linear_head
    from finetune.zoo import Preprocess, layers_of_group

    data_dir = SETS[set_name]()
    data = data_module.discover(str(data_dir), 0.2, 0)
    splits = {name: data_module.load_split(data, name, image_size, verbose=0) for name in ("train", "val", "test")}
    spec = zoo.get_spec(BACKBONE)
    backbone = zoo.build_backbone(spec, image_size=image_size, weights="imagenet")
    # The first layer of the lowest unfrozen group: everything below it is frozen and cached.
    names = {layer.name for layer in layers_of_group(backbone, spec, unfreeze_groups - 1)}
    first = next(layer for layer in backbone.layers if layer.name in names)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    bottom = keras.Model(backbone.input, first.input, name="bottom")
    frozen = keras.Model(inputs, bottom(Preprocess(spec.preprocessing, name="preprocess")(inputs)), name="frozen")
    top = keras.Model(first.input, backbone.output, name="top")
    started = time.time()
    maps = {name: frozen.predict(split.images.astype(np.float32), batch_size=64, verbose=0) for name, split in splits.items()}
    log(f"{set_name}: cached {sum(len(m) for m in maps.values())} maps {maps['train'].shape[1:]} in {time.time() - started:.0f} s")
    pooled = {name: keras.ops.convert_to_numpy(keras.ops.mean(top.predict(m, batch_size=64, verbose=0), axis=(1, 2))) for name, m in maps.items()}
    labels = {name: np.asarray(split.labels) for name, split in splits.items()}
    head = fit_linear_head(pooled["train"], labels["train"], len(data.class_names), pooled["val"], labels["val"])
    return {
        "head_test": head.probabilities(np.asarray(pooled["test"], dtype=np.float64)),
        "stagehead_test": stage_head_probabilities(backbone, spec, splits, labels, len(data.class_names)),
        "name": set_name, "data_dir": data_dir, "class_names": data.class_names, "image_size": image_size,
        "maps": maps, "labels": labels, "top": top, "frozen": frozen, "head": head, "spec": spec,
    }


def stage_head_probabilities(backbone, spec, splits, labels, num_classes):
    """Test probabilities of the multi-stage linear head finetune's linear strategies fit (stage 1 of training)."""
    from finetune.features import stage_features
    from finetune.policy import labelled_pool
    from finetune.stages import add_concatenation, fit_candidate, search_stage_heads

    features = {name: stage_features(backbone, spec, split.images, {"backbone": spec.name, "bench": "ensembles"}, cache=False)
                for name, split in splits.items()}
    pool = labelled_pool(features["train"], labels["train"], features["val"], labels["val"])
    search = add_concatenation(search_stage_heads(*pool, num_classes, list(spec.stage_endpoints)), *pool, num_classes)
    head = fit_candidate(search.best, *pool, num_classes)
    test = np.concatenate([features["test"][index] for index in search.best.stages], axis=1)
    log(f"  stage head: {search.best.name}, cross-validated accuracy {search.best.cv_accuracy:.3f}")
    return head.probabilities(np.asarray(test, dtype=np.float64))


def make_model(context: dict, seed: int):
    """The top blocks (ImageNet weights, BatchNorm frozen) + pooling + dropout + the fitted head."""
    import keras

    from finetune.freezing import freeze_batch_norm

    keras.utils.set_random_seed(seed)
    top = keras.models.clone_model(context["top"])
    top.set_weights(context["top"].get_weights())
    top.trainable = True
    freeze_batch_norm(top)
    inputs = keras.Input(context["maps"]["train"].shape[1:], name="maps")
    features = keras.layers.GlobalAveragePooling2D(name="pool")(top(inputs))
    features = keras.layers.Dropout(0.2, name="dropout")(features)
    classifier = keras.layers.Dense(len(context["class_names"]), activation="softmax", name="classifier")
    model = keras.Model(inputs, classifier(features), name="classifier_model")
    classifier.set_weights([context["head"].kernel, context["head"].bias])
    return model, top


def compile_model(model, top, schedule, optimizer: str = "adam"):
    import keras

    if optimizer == "sgd":
        chosen = keras.optimizers.SGD(schedule, momentum=0.9)
    else:
        from finetune.optimizers import DiscriminativeAdam

        chosen = DiscriminativeAdam(slow_variables=top.trainable_variables, slow_multiplier=BACKBONE_MULTIPLIER, learning_rate=schedule)
    model.compile(optimizer=chosen, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def fit(context, seed, schedule, epochs, callbacks=(), indices=None, optimizer="adam"):
    from finetune.data import make_dataset

    model, top = make_model(context, seed)
    compile_model(model, top, schedule, optimizer)
    maps, labels = context["maps"]["train"], context["labels"]["train"]
    if indices is not None:
        maps, labels = maps[indices], labels[indices]
    dataset = make_dataset(maps, labels, BATCH_SIZE, shuffle=True, seed=seed)
    history = model.fit(dataset, epochs=epochs, callbacks=list(callbacks), shuffle=False, verbose=0)
    return model, history


def steps_per_epoch(context) -> int:
    return math.ceil(len(context["labels"]["train"]) / BATCH_SIZE)


def probabilities(model, context, split="test"):
    return np.asarray(model.predict(context["maps"][split], batch_size=128, verbose=0))


def accuracy(probability, labels) -> float:
    return float(np.mean(np.argmax(probability, axis=1) == labels))


def run_arms(context: dict, seed: int, epochs: int, arms: list[str]) -> list[dict]:
    from finetune.callbacks import SnapshotSaver
    from finetune.ensemble import evaluate_members, load_members
    from finetune.schedules import build_schedule

    spe, test_labels = steps_per_epoch(context), context["labels"]["test"]
    rows = []

    def row(arm, members_probabilities, seconds, **extra):
        result = evaluate_members(None, None, test_labels, probabilities=np.asarray(members_probabilities))
        rows.append({
            "data": context["name"], "seed": seed, "arm": arm, "members": len(members_probabilities),
            "test_accuracy": result["ensemble"]["accuracy"], "test_loss": result["ensemble"]["loss"],
            "mean_member_accuracy": result["mean_member_accuracy"], "last_member_accuracy": result["members"][-1]["accuracy"],
            "disagreement": result["disagreement"], "seconds": round(seconds, 1), **extra,
        })
        log(f"  {context['name']} seed {seed} {arm}: ensemble {rows[-1]['test_accuracy']:.4f}, "
            f"members {[round(m['accuracy'], 4) for m in result['members']]}, {seconds:.0f} s")

    def members_for(arm: str) -> list:
        if arm == "head":
            return []
        if arm == "single":
            model, _ = fit(context, seed, build_schedule("cosine", LEARNING_RATE, spe, epochs), epochs)
            return [probabilities(model, context)]
        if arm.startswith("snapshot"):
            cycles, restart = (float(part[1:]) for part in arm.split("_")[1:])
            cycles = int(cycles)
            with tempfile.TemporaryDirectory() as directory:
                saver = SnapshotSaver(directory, cycle_epochs=epochs // cycles)
                schedule = build_schedule("snapshot", LEARNING_RATE * restart, spe, epochs, cycles=cycles)
                fit(context, seed, schedule, epochs, callbacks=[saver])
                return [probabilities(member, context) for member in load_members(saver.saved)]
        kind, count, budget = arm.split("_")
        count = int(count[1:])
        member_epochs = epochs if budget == "full" else max(1, epochs // count)
        rng = np.random.default_rng(seed)
        members = []
        for index in range(count):
            indices = None
            if kind == "bagged":
                indices = rng.integers(0, len(context["labels"]["train"]), len(context["labels"]["train"]))
            # A bootstrap sample has as many images as the training set: the same steps per epoch.
            schedule = build_schedule("cosine", LEARNING_RATE, spe, member_epochs)
            model, _ = fit(context, seed * 100 + index, schedule, member_epochs, indices=indices)
            members.append(probabilities(model, context))
        return members

    for arm in arms:
        started = time.time()
        # "+head": the linear head on frozen top features (stage 1, already computed) joins as a member;
        # "+stagehead": the multi-stage linear head (the best of finetune.stages' search) does.
        base, extra = arm, []
        for suffix, key in (("+stagehead", "stagehead_test"), ("+head", "head_test")):
            if arm.endswith(suffix):
                base, extra = arm[: -len(suffix)], [context[key]]
        if base in ("head", "stagehead"):
            base, extra = "none", [context[f"{base}_test"]]
        members = (members_for(base) if base != "none" else []) + extra
        row(arm, members, time.time() - started)
    return rows


def guard_trial(context: dict, epochs: int) -> list[dict]:
    """SGD with momentum at high rates, with and without the divergence guard."""
    from finetune.callbacks import DivergenceGuard
    from finetune.schedules import build_schedule

    rows = []
    spe = steps_per_epoch(context)
    for rate in (0.01, 0.1, 1.0):
        guard = DivergenceGuard(num_classes=len(context["class_names"]))
        model, history = fit(context, 0, build_schedule("cosine", rate, spe, epochs), epochs, callbacks=[guard], optimizer="sgd")
        unguarded, _ = fit(context, 0, build_schedule("cosine", rate, spe, epochs), epochs, optimizer="sgd")
        rows.append({
            "data": context["name"], "optimizer": "SGD momentum 0.9, cosine", "learning_rate": rate,
            "unguarded_test_accuracy": accuracy(probabilities(unguarded, context), context["labels"]["test"]),
            "guard_fired": bool(guard.diverged), "reason": guard.report["reason"] if guard.report else "",
            "epochs_run": len(history.history["loss"]),
            "guarded_test_accuracy": accuracy(probabilities(model, context), context["labels"]["test"]),
            "message": guard.report["message"] if guard.report else "",
        })
        log(f"  guard at lr {rate}: {rows[-1]}")
    return rows


def quantisation_trial(context: dict, epochs: int, cycles: int, restart: float, work: Path) -> list[dict]:
    """Exports the snapshot ensemble (full models, raw images in) and evaluates each format on the test split."""
    import keras

    from finetune.callbacks import SnapshotSaver
    from finetune.ensemble import load_members
    from finetune.export.writer import export_ensemble
    from finetune.inference import evaluate
    from finetune.files import atomic_write_json, save_model_atomic
    from finetune.schedules import build_schedule

    run_dir = work / f"{context['name']}-run"
    saver = SnapshotSaver(work / "cached-snapshots", cycle_epochs=epochs // cycles)
    schedule = build_schedule("snapshot", LEARNING_RATE * restart, steps_per_epoch(context), epochs, cycles=cycles)
    fit(context, 0, schedule, epochs, callbacks=[saver])
    size = context["image_size"]
    for index, member in enumerate(load_members(saver.saved), start=1):
        inputs = keras.Input((size, size, 3), name="image")
        full = keras.Model(inputs, member(context["frozen"](inputs)), name="classifier_model")
        save_model_atomic(full, run_dir / "snapshots" / f"snapshot_{index:02d}.keras")
        if index == cycles:
            save_model_atomic(full, run_dir / "model.keras")
    atomic_write_json(run_dir / "labels.json", context["class_names"])
    atomic_write_json(run_dir / "config.json", {"image_size": size, "seed": 0, "data": {"source": str(context["data_dir"]), "val_fraction": 0.2}})
    rows = []
    for format, quantize in (("keras", "none"), ("tflite", "none"), ("tflite", "float16"), ("tflite", "dynamic"), ("onnx", "none")):
        out = work / f"{context['name']}-{format}-{quantize}"
        started = time.time()
        note = ""
        try:
            sidecar = export_ensemble([run_dir], out, members="snapshots", format=format, quantize=quantize)
        except Exception as error:  # noqa: BLE001  a failed parity check is a result too
            note = f"default tolerance refused: {str(error)[:160]}"
            sidecar = export_ensemble([run_dir], out, members="snapshots", format=format, quantize=quantize, tolerance=1.0)
        export_seconds = time.time() - started
        result = evaluate(out, str(context["data_dir"]), batch_size=64)
        rows.append({
            "data": context["name"], "format": format, "quantize": quantize, "size_mb": round(sidecar["size_bytes"] / 1e6, 2),
            "test_accuracy": result["accuracy"], "parity_max_abs_diff": sidecar["parity"]["max_abs_diff"],
            "parity_top1_agreement": sidecar["parity"]["top1_agreement"], "export_seconds": round(export_seconds, 1), "note": note,
        })
        log(f"  export {rows[-1]}")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    for data in dict.fromkeys(row["data"] for row in rows):
        single = np.mean([row["test_accuracy"] for row in rows if row["data"] == data and row["arm"] == "single"])
        for arm in dict.fromkeys(row["arm"] for row in rows if row["data"] == data):
            chosen = [row for row in rows if row["data"] == data and row["arm"] == arm]
            values = np.array([row["test_accuracy"] for row in chosen])
            summary.append({
                "data": data, "arm": arm, "seeds": len(chosen), "test_accuracy": float(values.mean()),
                "std": float(values.std()), "vs_single_points": float(100 * (values.mean() - single)),
                "mean_member_accuracy": float(np.mean([row["mean_member_accuracy"] for row in chosen])),
                "disagreement": float(np.mean([row["disagreement"] for row in chosen])),
                "seconds": float(np.mean([row["seconds"] for row in chosen])),
            })
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["textures", "fashion_mnist"], choices=list(SETS))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", nargs="*", default=[
        "single", "snapshot_M3_r1", "snapshot_M3_r3", "snapshot_M5_r3", "independent_M3_same", "bagged_M3_same", "independent_M3_full",
    ])
    parser.add_argument("--quantise-sets", nargs="*", default=None, help="sets for the export trial (default: all)")
    parser.add_argument("--skip-guard", action="store_true")
    parser.add_argument("--unfreeze-groups", type=int, default=2, help="top freeze groups finetuned (the rest is cached)")
    parser.add_argument("--name", default="ensembles", help="results file name under benchmarks/results/")
    arguments = parser.parse_args()

    rows, guard_rows, export_rows = [], [], []
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        for set_name in arguments.sets:
            context = prepare(set_name, arguments.image_size, arguments.unfreeze_groups)
            for seed in range(arguments.seeds):
                rows += run_arms(context, seed, arguments.epochs, arguments.arms)
            if not arguments.skip_guard:
                guard_rows += guard_trial(context, arguments.epochs)
            if arguments.quantise_sets is None or set_name in arguments.quantise_sets:
                export_rows += quantisation_trial(context, arguments.epochs, 3, 3.0, Path(work))
    summary = summarise(rows)
    notes = (
        f"MobileNetV2 ({BACKBONE}, ImageNet), {arguments.image_size} px, top {arguments.unfreeze_groups} freeze groups + head finetuned on cached "
        f"maps of the frozen part (no augmentation), head started from logistic regression on cached features, "
        f"Adam lr {LEARNING_RATE} (backbone x{BACKBONE_MULTIPLIER}), batch {BATCH_SIZE}, {arguments.epochs} epochs in total "
        f"per arm (independent_full: per member), {arguments.seeds} seeds. Total {time.time() - started:.0f} s.\n\n"
        "Per seed:\n\n" + _table(rows, ["data", "seed", "arm", "members", "test_accuracy", "mean_member_accuracy", "last_member_accuracy", "disagreement", "seconds"])
    )
    if guard_rows:
        notes += "\n\nDivergence guard (SGD momentum):\n\n" + _table(guard_rows, ["data", "learning_rate", "unguarded_test_accuracy", "guard_fired", "reason", "epochs_run", "guarded_test_accuracy"])
        notes += "\n\nGuard messages:\n" + "\n".join(f"- {row['data']} lr {row['learning_rate']}: {row['message']}" for row in guard_rows if row["message"])
    if export_rows:
        notes += "\n\nExported snapshot ensemble (M=3, restart 3x), test split:\n\n" + _table(export_rows, ["data", "format", "quantize", "size_mb", "test_accuracy", "parity_max_abs_diff", "parity_top1_agreement", "export_seconds", "note"])
    save_results(arguments.name, summary, ["data", "arm", "seeds", "test_accuracy", "std", "vs_single_points", "mean_member_accuracy", "disagreement", "seconds"], notes)


def _table(rows, columns):
    from common import markdown_table

    return markdown_table(rows, columns)


if __name__ == "__main__":
    main()
