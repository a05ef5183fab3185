"""Training a classifier on a folder of images: head on cached features first, then the top blocks.

The recipe, fastai's `fine_tune` in Keras terms:
    1. build backbone (frozen) + global pooling + dropout + dense head;
    2. fit the head to convergence on features computed once (see `finetune.head`);
    3. unfreeze the top freeze groups of the backbone and finetune them at a low learning rate,
       with early stopping that restores the best weights; keep the result only if it beats (2)
       on validation data.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from finetune import run as run_files
from finetune.config import TrainConfig
from finetune.errors import FinetuneError


def build_classifier(backbone, preprocessing: str, num_classes: int, image_size: int, dropout: float = 0.2):
    """Raw RGB image (0..255) -> preprocessing -> backbone -> pooling -> dropout -> softmax."""
    import keras

    from finetune.zoo import Preprocess

    inputs = keras.Input((image_size, image_size, 3), name="image")
    features = Preprocess(preprocessing, name="preprocess")(inputs)
    features = backbone(features)
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


def unfreeze_top_groups(backbone, spec, count: int) -> list[str]:
    """Makes the top `count` freeze groups trainable and everything else frozen; returns their layers."""
    from finetune.zoo import layers_of_group

    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = False
    unfrozen = []
    for group_index in range(min(count, len(spec.freeze_groups))):
        for layer in layers_of_group(backbone, spec, group_index):
            layer.trainable = True
            unfrozen.append(layer.name)
    freeze_batch_norm(backbone)
    return unfrozen


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
    from finetune.head import fit_linear_head
    from finetune.metrics import classification_metrics

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
    model = build_classifier(backbone, spec.preprocessing, num_classes, image_size, config.model.dropout)
    resolved = config.to_dict()
    resolved.update(
        image_size=image_size,
        class_names=data.class_names,
        weights_source=weights_source,
        class_weights={data.class_names[k]: v for k, v in weights_by_class.items()} if weights_by_class else None,
        versions=library_versions(),
        run_dir=str(run_dir),
    )
    resolved["data"]["image_size"] = image_size
    run_files.atomic_write_json(run_dir / run_files.LABELS_FILE, data.class_names)
    run_files.atomic_write_json(run_dir / run_files.CONFIG_FILE, resolved)

    # Stage 1: the head, on features computed once.
    _log(config, f"Computing {spec.name} features of {len(train_split.labels)} training images (once)...")
    extractor = feature_extractor(model)
    predict_verbose = 1 if config.verbose else 0

    def features_of(split):
        return extractor.predict(split.images.astype(np.float32), batch_size=config.batch_size, verbose=predict_verbose)

    train_features = features_of(train_split)
    val_features = features_of(val_split) if val_split is not None else None
    head = fit_linear_head(
        train_features,
        train_split.labels,
        num_classes,
        val_features,
        val_split.labels if val_split is not None else None,
        c_grid=config.head_c_grid,
        class_weight=weights_by_class,
        seed=config.seed,
    )
    model.get_layer("classifier").set_weights([head.kernel, head.bias])
    _log(config, f"Head fit on cached features: C={head.c}, validation accuracy {head.val_accuracy}")
    stages = {"head": {"c": head.c, "val_accuracy": head.val_accuracy, "search": head.search}}

    # Stage 2: finetune the top groups, kept only when validation accuracy improves.
    if config.epochs > 0 and config.unfreeze_groups > 0 and val_split is not None:
        stages["finetune"] = _finetune(model, backbone, spec, config, train_split, val_split, weights_by_class, run_dir, head)

    run_files.save_model_atomic(model, run_dir / run_files.MODEL_FILE)
    metrics = {"stages": stages, "weights_source": weights_source, "train_seconds": None}
    for name, split in (("val", val_split), ("test", test_split)):
        if split is not None:
            probabilities = model.predict(split.images.astype(np.float32), batch_size=config.batch_size, verbose=0)
            metrics[name] = classification_metrics(split.labels, probabilities, data.class_names)
    metrics["val_accuracy"] = metrics["val"]["accuracy"] if "val" in metrics else None
    metrics["test_accuracy"] = metrics["test"]["accuracy"] if "test" in metrics else None
    metrics["class_weights"] = resolved["class_weights"]
    metrics["num_skipped"] = len(skipped)
    metrics["train_seconds"] = round(time.time() - started, 2)
    run_files.atomic_write_json(run_dir / run_files.METRICS_FILE, metrics)
    return run_files.load_run(run_dir)


def _finetune(model, backbone, spec, config, train_split, val_split, weights_by_class, run_dir, head):
    import keras

    from finetune.data import make_dataset

    unfrozen = unfreeze_top_groups(backbone, spec, config.unfreeze_groups)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train_dataset = make_dataset(train_split.images, train_split.labels, config.batch_size, shuffle=True, seed=config.seed)
    val_dataset = make_dataset(val_split.images, val_split.labels, config.batch_size, shuffle=False, seed=config.seed)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(run_dir / run_files.HISTORY_FILE), append=True),
        # A killed run started again with the same --out resumes from the last finished epoch.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
    ]
    head_weights = model.get_weights()
    head_accuracy = head.val_accuracy
    _log(config, f"Finetuning the top {config.unfreeze_groups} groups ({len(unfrozen)} layers) for up to {config.epochs} epochs...")
    history = model.fit(
        train_dataset,
        validation_data=val_dataset,
        epochs=config.epochs,
        class_weight=weights_by_class,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=1 if config.verbose else 0,
    )
    _, finetuned_accuracy = model.evaluate(val_dataset, verbose=0)
    kept = head_accuracy is None or finetuned_accuracy >= head_accuracy
    if not kept:
        model.set_weights(head_weights)
    _log(
        config,
        f"Finetuned validation accuracy {finetuned_accuracy:.4f} vs head alone {head_accuracy:.4f}: "
        + ("kept the finetuned model." if kept else "kept the head alone."),
    )
    # Freeze again so the saved model says what was trained and loads identically.
    backbone.trainable = False
    return {
        "unfrozen_groups": config.unfreeze_groups,
        "unfrozen_layers": len(unfrozen),
        "epochs_run": len(history.history.get("loss", [])),
        "val_accuracy": float(finetuned_accuracy),
        "kept": bool(kept),
    }
