"""Training a classifier on a folder of images, with the strategy the transfer policy picks.

Every strategy starts the same way, fastai's `fine_tune` in Keras terms: the backbone is frozen
and heads are fit to convergence on features computed once (`finetune.features`,
`finetune.head`), scored by cross-validation on every labelled image (`finetune.stages`).
Then, by strategy (`finetune.policy`):
    linear             the top stage's head is the model;
    multistage_linear  the best of heads on single stages, means of 2-3 of them and the
                       concatenation of all, and the backbone is cut after the stages it uses;
    finetune_top/most  the top freeze groups are unfrozen (few or many) and trained at a lower
                       rate than the head, with early stopping that restores the best weights;
    full               every group is unfrozen.
A finetuned model is kept only if it beats, on validation data, both the head it started from
and the best linear head of the stage search; otherwise that linear head is kept.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from finetune import run as run_files
from finetune.config import TrainConfig
from finetune.errors import FinetuneError, check_choice


def build_classifier(backbone, preprocessing: str, num_classes: int, image_size: int, dropout: float = 0.2):
    """Raw RGB image (0..255) -> preprocessing -> backbone -> pooling -> dropout -> softmax.

    A backbone with several outputs (stages) has each pooled and the results concatenated.
    """
    import keras

    from finetune.zoo import Preprocess

    inputs = keras.Input((image_size, image_size, 3), name="image")
    features = backbone(Preprocess(preprocessing, name="preprocess")(inputs))
    if isinstance(features, (list, tuple)):
        pooled = [keras.layers.GlobalAveragePooling2D(name=f"pool_{index}")(item) for index, item in enumerate(features)]
        features = keras.layers.Concatenate(name="pool")(pooled)
    else:
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    features = keras.layers.Dropout(dropout, name="dropout")(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(features)
    return keras.Model(inputs, outputs, name="classifier_model")


def feature_extractor(model):
    """The part of a classifier built by `build_classifier` that computes the pooled features."""
    import keras

    return keras.Model(model.inputs, model.get_layer("pool").output, name="features")


def freeze_batch_norm(backbone) -> None:
    """Sets every BatchNormalization layer non-trainable, which in Keras 3 also means inference mode.

    Why: finetuning batches are small and come from a new distribution; updating the moving
    statistics from them replaces ImageNet's with noisy estimates, and the model then behaves
    differently at test time than in training (the course's train-vs-test BatchNorm pitfall).
    The Keras guide's idiom, calling the base model with `training=False`, is not enough in
    Keras 3: `fit()` overrides it once layers are unfrozen (keras-team/keras#20285).
    """
    import keras

    for layer in backbone._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def unfreeze_top_groups(backbone, spec, count: int, pretrained: bool = True) -> list[str]:
    """Makes the top `count` freeze groups trainable and everything else frozen; returns their layers.

    BatchNorm layers stay frozen (inference mode) when the backbone is pretrained. A backbone
    trained from scratch (`weights="none"`) has no statistics worth keeping, and without
    normalisation a deep network barely trains: its BatchNorm layers in unfrozen groups train.
    """
    from finetune.zoo import layers_of_group

    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = False
    unfrozen = []
    for group_index in range(min(count, len(spec.freeze_groups))):
        for layer in layers_of_group(backbone, spec, group_index):
            layer.trainable = True
            unfrozen.append(layer.name)
    if pretrained:
        freeze_batch_norm(backbone)
    else:
        track_batch_statistics(backbone)
    return unfrozen


def track_batch_statistics(backbone, momentum: float = 0.9) -> None:
    """Lowers BatchNorm momentum so the moving statistics follow a network trained from scratch.

    keras.applications' MobileNets use momentum 0.999: the moving averages keep most of their
    initial values (mean 0, variance 1) for thousands of steps, so a network trained from scratch
    for a few epochs is right in training mode and at chance in inference mode (measured here:
    0.81 training accuracy, 0.10 validation), the course's train-vs-test BatchNorm pitfall.
    """
    import keras

    for layer in backbone._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, momentum)


def truncated_backbone(backbone, spec, stage_indices):
    """The backbone cut after the given stage endpoints (one output per stage)."""
    import keras

    from finetune.zoo import stage_outputs

    outputs = stage_outputs(backbone, spec)
    chosen = [outputs[index] for index in stage_indices]
    return keras.Model(backbone.inputs, chosen[0] if len(chosen) == 1 else chosen, name=f"{backbone.name}_cut")


def library_versions() -> dict:
    import keras
    import PIL
    import tensorflow as tf

    return {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def _log(config: TrainConfig, message: str) -> None:
    if config.verbose:
        print(message, file=sys.stderr, flush=True)


def train(config: TrainConfig):
    """Trains a classifier as configured and returns the loaded `finetune.run.Run`."""
    import keras

    from finetune import data as data_module
    from finetune import zoo
    from finetune.features import stage_features
    from finetune.metrics import classification_metrics
    from finetune.policy import STRATEGIES, groups_to_unfreeze, labelled_pool, measure_policy
    from finetune.stages import add_concatenation, search_stage_heads

    check_choice("strategy", config.strategy, STRATEGIES)
    if config.epochs < 0:
        raise FinetuneError(f"`epochs` must be 0 or more. Received: epochs={config.epochs}")
    if config.batch_size < 1:
        raise FinetuneError(f"`batch_size` must be at least 1. Received: batch_size={config.batch_size}")
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    spec = zoo.get_spec(config.model.backbone)
    image_size = config.data.image_size or spec.default_image_size
    data = data_module.discover(config.data.source, config.data.val_fraction, config.seed)
    run_dir = run_files.Path(config.out) if config.out else run_files.default_run_dir(data.name, spec.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    _log(config, f"Run directory: {run_dir}")

    def load(split_name):
        if split_name not in data.splits or len(data.splits[split_name].paths) == 0:
            return None
        return data_module.load_split(
            data, split_name, image_size, config.data.max_megapixels, config.data.cache, config.verbose
        )

    train_split, val_split, test_split = load("train"), load("val"), load("test")
    if train_split is None or len(train_split.labels) == 0:
        raise FinetuneError(f"No readable training images in {config.data.source}. See skipped.json in {run_dir}.")
    skipped = list(data.skipped) + [item for split in (train_split, val_split, test_split) if split for item in split.skipped]
    run_files.atomic_write_json(run_dir / run_files.SKIPPED_FILE, skipped)
    num_classes = len(data.class_names)
    weights_by_class = data_module.class_weights(train_split.labels, num_classes)

    backbone, weights_source = zoo.build_backbone_with_source(
        spec, image_size=image_size, weights=config.model.weights, alpha=config.model.alpha
    )
    backbone.trainable = False
    run_files.atomic_write_json(run_dir / run_files.LABELS_FILE, data.class_names)

    # Features of every stage, computed once (and cached on disk) for the policy and the heads.
    _log(config, f"Computing {spec.name} features of {len(train_split.labels)} training images (once)...")
    identity = {"backbone": spec.name, "weights": weights_source, "alpha": config.model.alpha}
    predict_verbose = 1 if config.verbose else 0

    def features_of(split):
        if split is None:
            return None
        return stage_features(backbone, spec, split.images, identity, config.batch_size, predict_verbose, config.data.cache)

    train_features, val_features = features_of(train_split), features_of(val_split)
    # One cross-validated search over the stages' heads serves the policy (how the top stage
    # compares with lower ones) and the linear strategies (which head to keep).
    labelled = labelled_pool(train_features, train_split.labels, val_features, None if val_split is None else val_split.labels)
    search = search_stage_heads(*labelled, num_classes, list(spec.stage_endpoints), c_grid=config.head_c_grid,
                                max_per_class=config.policy.search_max_per_class, class_weight=weights_by_class, seed=config.seed)
    policy = measure_policy(spec, weights_source, search, train_features[-1], train_split.labels, num_classes, config.policy)
    policy["requested"] = config.strategy
    strategy = policy["strategy"] if config.strategy == "auto" else config.strategy
    policy["used"] = strategy
    run_files.atomic_write_json(run_dir / "policy.json", policy)
    _log(config, f"Strategy: {strategy}" + (" (picked by the policy: " + policy["reasons"][-1] + ")" if config.strategy == "auto" else " (requested)"))

    linear_data = (search, labelled, train_features, train_split.labels, val_features, weights_by_class)
    if strategy in ("linear", "multistage_linear"):
        if strategy == "multistage_linear":
            add_concatenation(search, *labelled, num_classes, config.head_c_grid, config.policy.search_max_per_class,
                              weights_by_class, config.seed)
        candidate = search.best if strategy == "multistage_linear" else search.top
        model, stages, head_history = _linear(candidate, strategy == "multistage_linear", backbone, spec, image_size,
                                              num_classes, *linear_data, config)
    else:
        fit_head = _head_fitter(train_split, val_split, num_classes, weights_by_class, config)
        model = build_classifier(backbone, spec.preprocessing, num_classes, image_size, config.model.dropout)
        head = fit_head(train_features[-1], None if val_features is None else val_features[-1])
        model.get_layer("classifier").set_weights([head.kernel, head.bias])
        stages = {"head": {"c": head.c, "val_accuracy": head.val_accuracy, "search": head.search}}
        head_history = (head, train_features[-1], None if val_features is None else val_features[-1])
        _log(config, f"Head fit on cached features: C={head.c}, validation accuracy {head.val_accuracy}")
        groups = config.unfreeze_groups if config.unfreeze_groups is not None else groups_to_unfreeze(
            strategy, len(spec.freeze_groups), config.policy)
        if strategy in ("finetune_top", "finetune_most", "full") and config.epochs > 0 and groups > 0:
            if val_split is None:
                raise FinetuneError(
                    f"Strategy {strategy} needs validation images for early stopping, and {config.data.source} has none. "
                    "Add a val/ folder or a --val-fraction above 0."
                )
            stages["finetune"] = _finetune(model, backbone, spec, groups, config, train_split, val_split, weights_by_class, run_dir, head)
            finetuned = stages["finetune"]
            current = finetuned["val_accuracy"] if finetuned["kept"] else head.val_accuracy
            candidate = search.best
            rival = _linear_rival(candidate, search.endpoints, train_features, val_features, train_split.labels,
                                  val_split.labels, num_classes, weights_by_class, config.seed)
            finetuned["linear_rival"] = rival
            if rival["val_accuracy"] > current:
                # Finetuning did not beat the best linear head of the stage search on the same
                # validation images (measured here: Fashion-MNIST at 300 images per class, 5 epochs
                # of finetune_most 0.856 vs the multi-stage head 0.873): keep the linear head.
                _log(config, f"The multi-stage linear head ({rival['name']}) beats the finetuned model on validation data "
                             f"({rival['val_accuracy']:.4f} vs {current:.4f}): keeping the linear head.")
                # The very head that won the comparison, refit like a linear strategy's.
                model, linear_stages, head_history = _linear(candidate, True, backbone, spec, image_size, num_classes,
                                                             *linear_data, config)
                stages.update(linear_stages)
                finetuned["kept"] = False
                finetuned["replaced_by"] = "multistage_linear"

    if "finetune" not in stages:
        best_head, chosen_train, chosen_val = head_history
        _write_head_history(run_dir / run_files.HISTORY_FILE, best_head, chosen_train, train_split.labels,
                            chosen_val, None if val_split is None else val_split.labels)

    resolved = config.to_dict()
    resolved.update(
        strategy=strategy,
        strategy_requested=config.strategy,
        image_size=image_size,
        class_names=data.class_names,
        weights_source=weights_source,
        class_weights={data.class_names[k]: v for k, v in weights_by_class.items()} if weights_by_class else None,
        versions=library_versions(),
        run_dir=str(run_dir),
    )
    resolved["data"]["image_size"] = image_size
    # Saved without the optimizer: a fresh functional model over the same layers.
    run_files.save_model_atomic(keras.Model(model.inputs, model.outputs, name="classifier_model"), run_dir / run_files.MODEL_FILE)
    metrics = {"strategy": strategy, "stages": stages, "weights_source": weights_source}
    for name, split in (("val", val_split), ("test", test_split)):
        if split is not None:
            probabilities = model.predict(split.images.astype(np.float32), batch_size=config.batch_size, verbose=0)
            metrics[name] = classification_metrics(split.labels, probabilities, data.class_names)
    if "val" in metrics:
        # A linear head fit on training and validation images has seen the validation split.
        metrics["val"]["held_out"] = not stages.get("head", {}).get("fit_on", "train").endswith("val")
    snapshots = stages.get("finetune", {}).get("snapshots")
    if snapshots:
        metrics["snapshots"] = _evaluate_snapshots(snapshots, val_split, test_split, config.batch_size)
    tta = _choose_tta(model, data, val_split, image_size, config)
    if tta is not None:
        resolved["tta"] = tta["mode"]
        metrics["tta"] = tta
    metrics["augment"] = stages.get("finetune", {}).get("augment")
    metrics.update(_curves(run_dir, config))
    metrics["val_accuracy"] = metrics["val"]["accuracy"] if "val" in metrics else None
    metrics["cv_accuracy"] = stages.get("head", {}).get("cv_accuracy")
    metrics["test_accuracy"] = metrics["test"]["accuracy"] if "test" in metrics else None
    metrics["class_weights"] = resolved["class_weights"]
    metrics["num_skipped"] = len(skipped)
    metrics["train_seconds"] = round(time.time() - started, 2)
    run_files.atomic_write_json(run_dir / run_files.CONFIG_FILE, resolved)
    run_files.atomic_write_json(run_dir / run_files.METRICS_FILE, metrics)
    return run_files.load_run(run_dir)


def _evaluate_snapshots(paths, val_split, test_split, batch_size) -> dict:
    """Each snapshot and their ensemble on the validation (and test) images."""
    from finetune.ensemble import evaluate_members, load_members

    members = load_members(paths)
    result = {"paths": [str(path) for path in paths]}
    for name, split in (("val", val_split), ("test", test_split)):
        if split is not None:
            result[name] = evaluate_members(members, split.images, split.labels, batch_size)
    return result


def _choose_tta(model, data, val_split, image_size, config) -> dict | None:
    """The test-time crop mode with the best validation accuracy (config.tta == "auto"), recorded in the run."""
    from finetune.data import load_split

    if config.tta == "none" or val_split is None:
        return None
    if config.tta != "auto":
        return {"mode": config.tta, "chosen_by": "requested"}
    from augment.tta import choose_tta

    def images_at(size):
        if size == image_size:
            return val_split.images
        return load_split(data, "val", size, config.data.max_megapixels, config.data.cache, verbose=0).images

    _log(config, "Measuring test-time augmentation modes on validation images...")
    mode, accuracies = choose_tta(model, images_at, val_split.labels, image_size=image_size, batch_size=config.batch_size)
    _log(config, f"Test-time augmentation: {mode} (validation accuracy by mode: "
                 + ", ".join(f"{name} {value:.3f}" for name, value in accuracies.items()) + ")")
    return {"mode": mode, "chosen_by": "validation accuracy, ties to the cheaper mode", "val_accuracy": accuracies}


def _curves(run_dir, config) -> dict:
    """curves.png and the diagnosis of the curves' shape, when there are epochs to plot."""
    from finetune.curves import diagnose_curves, plot_curves

    history_path = run_dir / run_files.HISTORY_FILE
    if not history_path.exists():
        return {}
    diagnosis = diagnose_curves(history_path)
    try:
        plot_curves(history_path, run_dir / "curves.png", title=run_dir.name)
    except Exception as error:  # a plot must never cost the run
        diagnosis = {**diagnosis, "plot_error": str(error)}
    if diagnosis.get("verdict") not in (None, "no_history"):
        _log(config, f"Curves: {diagnosis['verdict']}: {diagnosis.get('explanation', '')}")
    return {"diagnosis": diagnosis}


def _head_fitter(train_split, val_split, num_classes, weights_by_class, config):
    from finetune.head import fit_linear_head

    def fit(train_features, val_features):
        return fit_linear_head(
            train_features, train_split.labels, num_classes, val_features,
            None if val_split is None else val_split.labels,
            c_grid=config.head_c_grid, class_weight=weights_by_class, seed=config.seed,
        )

    return fit


def _write_head_history(path, head, train_features, train_labels, val_features, val_labels) -> None:
    """history.csv of a run without finetuning epochs: one line for the head, as Keras' CSVLogger writes."""

    def accuracy_and_loss(features, labels):
        probabilities = head.probabilities(np.asarray(features, dtype=np.float64))
        picked = probabilities[np.arange(len(labels)), labels]
        return float((probabilities.argmax(1) == labels).mean()), float(-np.log(np.clip(picked, 1e-12, 1)).mean())

    accuracy, loss = accuracy_and_loss(train_features, train_labels)
    row = ["0", repr(accuracy), repr(loss)]
    if val_features is not None:
        row += [repr(value) for value in accuracy_and_loss(val_features, val_labels)]
    header = "epoch,accuracy,loss" + (",val_accuracy,val_loss" if val_features is not None else "")
    run_files.atomic_write_text(path, header + "\n" + ",".join(row) + "\n")


def _linear_rival(candidate, endpoints, train_features, val_features, train_labels, val_labels, num_classes,
                  weights_by_class, seed) -> dict:
    """A linear head of the stage search fit on the training split, scored on the validation split (as finetuning is)."""
    from finetune.stages import fit_candidate

    head = fit_candidate(candidate, train_features, train_labels, num_classes, weights_by_class, seed)
    joined = np.concatenate([val_features[index] for index in candidate.stages], axis=1)
    accuracy = float((head.probabilities(np.asarray(joined, dtype=np.float64)).argmax(axis=1) == np.asarray(val_labels)).mean())
    return {"name": candidate.name, "stages": [endpoints[index] for index in candidate.stages], "val_accuracy": accuracy}


def _linear(candidate, cut, backbone, spec, image_size, num_classes, search, labelled, train_features, train_labels,
            val_features, weights_by_class, config):
    """A model of the backbone and the head of one `candidate` of the stage search.

    `cut`: the backbone is truncated after the candidate's stages (multistage_linear); else it is
    whole and the candidate is the top stage (linear). The head is fit on every labelled image
    when `config.linear_fit_on_val` (its cross-validated accuracy is then the honest estimate),
    else on the training split.
    """
    from finetune.stages import fit_candidate

    fit_on_val = config.linear_fit_on_val and val_features is not None
    features, labels = labelled if fit_on_val else (train_features, train_labels)
    head = fit_candidate(candidate, features, labels, num_classes, weights_by_class, config.seed)
    indices = list(candidate.stages)
    network = truncated_backbone(backbone, spec, indices) if cut else backbone
    model = build_classifier(network, spec.preprocessing, num_classes, image_size, config.model.dropout)
    model.get_layer("classifier").set_weights([head.kernel, head.bias])
    for item in search.candidates[:5]:
        _log(config, f"  {item.name}: cross-validated accuracy {item.cv_accuracy:.3f}, log loss {item.cv_loss:.3f}")
    _log(config, f"Kept {candidate.name} (C={head.c}), fit on {'training and validation' if fit_on_val else 'training'} images.")
    scored = candidate.to_dict()  # unscored values as None
    stages = {
        "head": {"c": head.c, "stages": [spec.stage_endpoints[index] for index in indices], "kind": candidate.kind,
                 "cv_accuracy": scored["cv_accuracy"], "cv_loss": scored["cv_loss"],
                 "fit_on": "train+val" if fit_on_val else "train"},
        "search": search.to_dict(),
    }
    if cut:
        stages["multistage"] = {
            "candidates": [item.to_dict() for item in search.candidates],
            "chosen": candidate.name,
            "chosen_stages": [spec.stage_endpoints[index] for index in indices],
        }

    def joined(split_features):
        return None if split_features is None else np.concatenate([split_features[index] for index in indices], axis=1)

    return model, stages, (head, joined(train_features), joined(val_features))


def _finetune(model, backbone, spec, groups, config, train_split, val_split, weights_by_class, run_dir, head):
    import math

    import keras

    import augment
    from finetune import callbacks as finetune_callbacks
    from finetune import zoo
    from finetune.data import make_dataset
    from finetune.ensemble import SNAPSHOT_DIR
    from finetune.optimizers import DiscriminativeAdam
    from finetune.schedules import build_schedule

    num_classes = int(model.output_shape[-1])
    # From scratch (weights "none") nothing is worth protecting: BatchNorm trains, and the backbone
    # learns at the head's rate.
    pretrained = not zoo.is_random_initialisation(config.model.weights)
    unfrozen = unfreeze_top_groups(backbone, spec, groups, pretrained=pretrained)
    options = augment.resolve(config.augment, **config.augment_options)
    augmenter = augment.build_augmenter(options, seed=config.seed)
    in_model = augmenter is not None and options.placement == "model"
    train_dataset = make_dataset(train_split.images, train_split.labels, config.batch_size, shuffle=True, seed=config.seed,
                                 augment=None if in_model else augmenter)
    val_dataset = make_dataset(val_split.images, val_split.labels, config.batch_size, shuffle=False, seed=config.seed)
    mixing = options.mixing()
    if mixing:
        train_dataset = augment.mix_dataset(train_dataset, num_classes, options.mixup, options.cutmix, seed=config.seed)
        val_dataset = augment.one_hot_dataset(val_dataset, num_classes)
    loss, metrics = augment.loss_and_metrics(soft_labels=mixing)
    # Trained through a wrapper when augmentation runs on the accelerator; `model` shares its weights.
    fit_model = augment.with_augmentation(model, augmenter) if in_model else model

    epochs = config.epochs
    warmup_epochs = min(config.warmup_epochs, epochs - 1) if config.warmup != "none" else 0
    schedule_name, schedule_options = config.schedule, dict(config.schedule_options)
    if config.snapshots >= 2:
        # Every cycle must end at an epoch end, where its snapshot is saved.
        cycles = config.snapshots
        epochs = warmup_epochs + cycles * max(1, math.ceil((epochs - warmup_epochs) / cycles))
        schedule_name, schedule_options = "snapshot", {**schedule_options, "cycles": cycles}
    steps_per_epoch = max(1, math.ceil(len(train_split.labels) / config.batch_size))
    schedule = build_schedule(schedule_name, config.learning_rate, steps_per_epoch, epochs,
                              warmup_epochs=warmup_epochs, warmup=config.warmup if warmup_epochs else "none",
                              **schedule_options)
    fit_model.compile(
        optimizer=DiscriminativeAdam(
            slow_variables=backbone.trainable_variables,
            slow_multiplier=config.backbone_learning_rate_multiplier if pretrained else 1.0,
            learning_rate=schedule,
        ),
        loss=loss,
        metrics=metrics,
    )
    guard = finetune_callbacks.DivergenceGuard(num_classes=num_classes)
    ratio_monitor = finetune_callbacks.UpdateRatioMonitor.for_freeze_groups(model, backbone, spec, groups)
    callbacks = [
        guard,
        finetune_callbacks.LearningRateLogger(),
        ratio_monitor,  # before CSVLogger, so that its ratios reach history.csv
        keras.callbacks.CSVLogger(str(run_dir / run_files.HISTORY_FILE), append=True),
        # A killed run started again with the same --out resumes from the last finished epoch.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
    ]
    snapshot_saver = None
    if config.snapshots >= 2:
        snapshot_saver = finetune_callbacks.SnapshotSaver(run_dir / SNAPSHOT_DIR, (epochs - warmup_epochs) // config.snapshots,
                                                          offset_epochs=warmup_epochs, model=model)
        callbacks.append(snapshot_saver)
    else:
        callbacks.insert(1, keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True))
    head_weights = model.get_weights()
    head_accuracy = head.val_accuracy
    _log(config, f"Finetuning the top {groups} of {len(spec.freeze_groups)} groups ({len(unfrozen)} layers) for up to "
                 f"{epochs} epochs, {schedule_name} schedule, augmentation {config.augment}...")
    history = fit_model.fit(
        train_dataset,
        validation_data=val_dataset,
        epochs=epochs,
        class_weight=weights_by_class,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=1 if config.verbose else 0,
    )
    _, finetuned_accuracy = fit_model.evaluate(val_dataset, verbose=0)
    kept = head_accuracy is None or finetuned_accuracy >= head_accuracy
    if not kept:
        model.set_weights(head_weights)
    if guard.report:
        _log(config, guard.report["message"])
    _log(
        config,
        f"Finetuned validation accuracy {finetuned_accuracy:.4f} vs head alone {head_accuracy:.4f}: "
        + ("kept the finetuned model." if kept else "kept the head alone."),
    )
    # Freeze again so the saved model says what was trained and loads identically.
    backbone.trainable = False
    return {
        "unfrozen_groups": groups,
        "unfrozen_layers": len(unfrozen),
        "epochs_run": len(history.history.get("loss", [])),
        "schedule": schedule_name,
        "warmup_epochs": warmup_epochs,
        "augment": augment.describe(config.augment, **config.augment_options),
        "val_accuracy": float(finetuned_accuracy),
        "kept": bool(kept),
        "divergence": guard.report,
        "update_ratios": {name: float(value) for name, value in ratio_monitor.ratios.items()},
        "snapshots": [str(path) for path in snapshot_saver.saved] if snapshot_saver else [],
    }
