"""finetune vs the recipe of the official Keras transfer-learning guide, same weights, same data.

The peer baseline, as the guide writes it: `image_dataset_from_directory`, a frozen MobileNetV2,
RandomFlip + RandomRotation layers, global average pooling, dropout, a dense layer; trained for
10 epochs (Adam 1e-3), then the layers from 100 on unfrozen and trained 10 more epochs at a 10x
lower rate, the base model called with `training=False`. Both get the same ImageNet weights
(imported offline), the same image size, and the same train/val/test folders.

    python benchmarks/bench_vs_keras_guide.py [--sets textures fashion_mnist] [--image-size 160]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import datasets  # noqa: E402
from common import save_results  # noqa: E402


def keras_guide(data_dir: Path, image_size: int, backbone: str, seed: int, head_epochs=10, finetune_epochs=10):
    import keras

    from finetune.zoo import build_backbone

    keras.utils.set_random_seed(seed)
    started = time.time()
    load = dict(image_size=(image_size, image_size), batch_size=32, seed=seed, label_mode="int")
    train = keras.utils.image_dataset_from_directory(data_dir / "train", shuffle=True, **load)
    val = keras.utils.image_dataset_from_directory(data_dir / "val", shuffle=False, **load)
    test = keras.utils.image_dataset_from_directory(data_dir / "test", shuffle=False, **load)
    num_classes = len(train.class_names)
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    base = build_backbone(backbone, image_size=image_size, weights="imagenet")
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3))
    x = augmentation(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)  # mobilenet_v2.preprocess_input
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=head_epochs, verbose=0)
    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=head_epochs + finetune_epochs, initial_epoch=head_epochs, verbose=0)
    _, accuracy = model.evaluate(test, verbose=0)
    return float(accuracy), time.time() - started


def ours(data_dir: Path, image_size: int, backbone: str, seed: int):
    import finetune

    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        run = finetune.train(
            str(data_dir), backbone=backbone, image_size=image_size, seed=seed,
            out=str(Path(out) / "run"), verbose=0, cache=False,
        )
        return float(run.metrics["test_accuracy"]), time.time() - started, run.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["textures", "fashion_mnist", "digits"])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--backbone", default="mobilenet_v2_torchvision")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    rows = []
    for name in arguments.sets:
        data_dir = datasets.BUILDERS[name]()
        guide_accuracy, guide_seconds = keras_guide(data_dir, arguments.image_size, arguments.backbone, arguments.seed)
        rows.append({"data": name, "method": "keras guide (10+10 epochs)", "test_accuracy": guide_accuracy,
                     "seconds": round(guide_seconds, 1)})
        print(rows[-1], flush=True)
        accuracy, seconds, metrics = ours(data_dir, arguments.image_size, arguments.backbone, arguments.seed)
        rows.append({
            "data": name, "method": f"finetune train (strategy auto: {metrics['strategy']})", "test_accuracy": accuracy,
            "seconds": round(seconds, 1), "vs_guide_accuracy": round(accuracy - guide_accuracy, 3),
            "time_ratio": round(seconds / guide_seconds, 3),
        })
        print(rows[-1], flush=True)
    notes = (
        f"MobileNetV2 ({arguments.backbone}) at {arguments.image_size} px, seed {arguments.seed}, 30 training and "
        "10 validation images per class. Targets: test accuracy >= the guide's, time_ratio <= 0.5. Our time "
        "includes decoding, the policy's measurements and writing the run; the image and feature caches are off."
    )
    save_results("vs_keras_guide", rows, ["data", "method", "test_accuracy", "seconds", "vs_guide_accuracy", "time_ratio"], notes)


if __name__ == "__main__":
    main()
