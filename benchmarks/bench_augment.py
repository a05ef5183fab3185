"""Augmentation and test-time augmentation: pipeline speed, TTA cost, and what they do to accuracy.

Three parts, each written to benchmarks/results/augment_<part>.json and .md:

    pipeline   images per second of the augmented input pipeline (cached uint8 images -> gather
               -> augment -> mix -> batch -> prefetch) for each preset at 224 px, beside
               MobileNetV2-224's forward and training throughput on the same machine; and how
               fast the one-time decode into the cache runs on photo-sized JPEGs.
    tta_cost   images per second of MobileNetV2-224 under each TTA mode (all views of a batch
               in one forward pass): ten_crop must reach 0.8 x (single view / 10).
    accuracy   on real images (textures, fashion_mnist): a linear head on frozen ImageNet
               MobileNetV2 features of augmented training images (the same number of augmented
               copies, "epochs", for every setting; mixed images train with their soft labels),
               test accuracy for no augmentation, each preset, mixup and cutmix; then every TTA
               mode on the test images for heads trained without augmentation, with crops that
               cover the five/ten-crop views (`light`) and with ResNet scale jitter (covers the
               multiscale views), and the mode `choose_tta` (auto) picked on validation data.

    python benchmarks/bench_augment.py [--parts pipeline tta_cost accuracy] [--sets textures fashion_mnist]
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

PRESETS = ("none", "light", "standard", "strong")
# Timings are the best of this many interleaved rounds.
ROUNDS = 3


def _log(*values) -> None:
    print(*values, flush=True)


# ---------------------------------------------------------------------------------------------
# Pipeline throughput


def _photo_folder(root: Path, count: int = 128) -> Path:
    """Photo-sized JPEGs (640x480) cut from scikit-image's colour pictures, four classes."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
    for index in range(count):
        name = list(pictures)[index % 4]
        picture = pictures[name]
        height, width = picture.shape[:2]
        crop_height, crop_width = int(height * 0.8), int(width * 0.8)
        top, left = rng.integers(0, height - crop_height + 1), rng.integers(0, width - crop_width + 1)
        image = Image.fromarray(picture[top : top + crop_height, left : left + crop_width]).resize((640, 480))
        (root / name).mkdir(parents=True, exist_ok=True)
        image.save(root / name / f"{index:04d}.jpg", quality=90)
    return root


def _pipeline_rate(images, labels, preset: str, batch_size: int = 32, batches: int = 24) -> float:
    import augment
    from finetune.data import make_dataset

    options = augment.resolve(preset)
    dataset = make_dataset(images, labels, batch_size, shuffle=True, seed=0,
                           augment=augment.build_augmenter(options, seed=0), repeat=True)
    if options.mixing():
        dataset = augment.mix_dataset(dataset, int(labels.max()) + 1, options.mixup, options.cutmix, seed=0)
    iterator = iter(dataset)
    for _ in range(3):  # tracing, and the prefetch buffer filling
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - started)


def _model_rates(image_size: int = 224, batch_size: int = 32) -> dict:
    """MobileNetV2 (alpha 1.0) images per second (fastest of 4 steps): forward, training the top 2 groups, all."""
    import keras

    from finetune.freezing import unfreeze_top_groups
    from finetune.model import build_classifier
    from finetune.zoo import build_backbone, get_spec

    spec = get_spec("mobilenet_v2")
    backbone = build_backbone(spec, image_size=image_size, weights="none")
    model = build_classifier(backbone, spec.preprocessing, 10, image_size)
    images = np.random.default_rng(0).uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = np.zeros(batch_size, np.int64)

    def rate(step, repeats=4):
        step()  # tracing
        fastest = float("inf")
        for _ in range(repeats):  # the fastest step: the least disturbed by other work on the machine
            started = time.perf_counter()
            step()
            fastest = min(fastest, time.perf_counter() - started)
        return batch_size / fastest

    rates = {"forward": rate(lambda: model.predict_on_batch(images))}
    unfreeze_top_groups(backbone, spec, 2)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    rates["train_top2"] = rate(lambda: model.train_on_batch(images, labels))
    backbone.trainable = True
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    rates["train_all"] = rate(lambda: model.train_on_batch(images, labels))
    return rates


def part_pipeline() -> None:
    from finetune import data as data_module

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        photos = _photo_folder(Path(folder) / "photos")
        source = data_module.discover(str(photos), val_fraction=0.0)
        started = time.perf_counter()
        train = data_module.load_split(source, "train", 224, cache=True, verbose=0)
        decode_rate = len(train.labels) / (time.perf_counter() - started)
        rows.append({"step": "decode + resize + cache (once per data set)", "images_per_second": round(decode_rate, 1)})
        _log(rows[-1])
        images, labels = np.asarray(train.images), train.labels
        # Interleaved rounds, best of each: the machine is shared, and other work comes and goes.
        model = _model_rates()
        rates = {preset: 0.0 for preset in PRESETS}
        for _ in range(ROUNDS):
            for preset in PRESETS:
                rates[preset] = max(rates[preset], _pipeline_rate(images, labels, preset))
            _log("pipeline", {preset: round(rate, 1) for preset, rate in rates.items()})
        model = {name: max(rate, model[name]) for name, rate in _model_rates().items()}
    _log("MobileNetV2-224", model)
    for preset, rate in rates.items():
        rows.append({"step": f"pipeline, preset {preset}", "images_per_second": round(rate, 1),
                     "x_train_top2": round(rate / model["train_top2"], 1), "x_train_all": round(rate / model["train_all"], 1),
                     "x_forward": round(rate / model["forward"], 1)})
        _log(rows[-1])
    for name, rate in model.items():
        rows.append({"step": f"MobileNetV2-224 {name.replace('_', ' ')}", "images_per_second": round(rate, 1)})
    slowest = min(rates.values())
    notes = (
        f"Best of {ROUNDS} interleaved rounds. Batches of 32 at 224 px from the decoded-image cache (a memory map), tf.data with AUTOTUNE "
        "parallelism on all cores; the strong preset includes mixup/cutmix. MobileNetV2 alpha 1.0, batch 32: "
        "'train top2' is finetune's finetuning stage (top 2 freeze groups trainable), 'train all' every layer. "
        f"Target: the pipeline >= 3x the training rate. Slowest preset: {slowest:.0f} images/s = "
        f"{slowest / model['train_top2']:.1f}x training the top 2 groups, {slowest / model['train_all']:.1f}x training all, "
        f"{slowest / model['forward']:.1f}x the forward pass. The machine is shared (2 cores): rates vary by 2x run to run, "
        "and while training, the pipeline competes with it for the same cores."
    )
    save_results("augment_pipeline", rows, ["step", "images_per_second", "x_train_top2", "x_train_all", "x_forward"], notes)


# ---------------------------------------------------------------------------------------------
# TTA cost


def part_tta_cost(image_size: int = 224) -> None:
    from augment.tta import MODES, build_tta_model, source_size, view_count
    from finetune.model import build_classifier
    from finetune.zoo import build_backbone, get_spec

    spec = get_spec("mobilenet_v2")
    model = build_classifier(build_backbone(spec, image_size=image_size, weights="none"), spec.preprocessing, 10, image_size)
    rng = np.random.default_rng(0)
    # Source images per forward pass (40 views per pass, 50 for multiscale); two passes per timing.
    batches = {"none": 40, "center": 40, "flip": 20, "five_crop": 8, "ten_crop": 4, "multiscale": 1}
    tta_models, inputs, rates = {}, {}, {mode: 0.0 for mode in MODES}
    for mode in MODES:
        size = source_size(mode, image_size)
        inputs[mode] = rng.uniform(0, 255, (2 * batches[mode], size, size, 3)).astype(np.float32)
        tta_models[mode] = build_tta_model(model, mode)
        tta_models[mode].predict(inputs[mode][: batches[mode]], batch_size=batches[mode], verbose=0)
    for _ in range(ROUNDS):  # interleaved, best of each: the machine is shared
        for mode in MODES:
            started = time.perf_counter()
            tta_models[mode].predict(inputs[mode], batch_size=batches[mode], verbose=0)
            rates[mode] = max(rates[mode], len(inputs[mode]) / (time.perf_counter() - started))
        _log({mode: round(rate, 2) for mode, rate in rates.items()})
    rows = [{"mode": mode, "source_size": source_size(mode, image_size), "views": view_count(mode),
             "views_per_pass": batches[mode] * view_count(mode), "images_per_second": round(rates[mode], 2),
             "views_per_second": round(rates[mode] * view_count(mode), 1)} for mode in MODES]
    ratio = rates["ten_crop"] / (rates["none"] / 10)
    notes = (
        f"MobileNetV2 alpha 1.0 at {image_size} px, random weights (speed does not depend on them); best of {ROUNDS} "
        f"interleaved rounds of two forward passes per mode. ten_crop throughput / "
        f"(single-view throughput / 10) = {ratio:.2f} (target >= 0.8). Every view of a batch of source images goes "
        "through the network in one forward pass; the crops are slices of the source (no resampling) except for "
        "multiscale, which resizes the 640/224 source to each scale."
    )
    save_results("augment_tta_cost", rows, ["mode", "source_size", "views", "views_per_pass", "images_per_second",
                                            "views_per_second"], notes)


# ---------------------------------------------------------------------------------------------
# Accuracy


SETTINGS = {  # name -> (preset, overrides)
    "none": ("none", {}),
    "light": ("light", {}),
    "standard": ("standard", {}),
    "strong": ("strong", {}),
    "mixup 0.2": ("none", {"mixup": 0.2}),
    "cutmix 1.0": ("none", {"cutmix": 1.0}),
    "scale jitter 256-480 + flip": ("none", {"scale_jitter": (256, 480), "horizontal_flip": True}),
}
TTA_SETTINGS = ("none", "light", "scale jitter 256-480 + flip")


class Setup:
    def __init__(self, name: str, image_size: int, batch_size: int = 32):
        from finetune import data as data_module
        from finetune.model import build_classifier, feature_extractor
        from finetune.zoo import build_backbone, get_spec

        self.name, self.image_size, self.batch_size = name, image_size, batch_size
        self.data = data_module.discover(str(datasets.BUILDERS[name]()), val_fraction=0.0)
        self.num_classes = len(self.data.class_names)
        spec = get_spec("mobilenet_v2_torchvision")
        self.backbone = build_backbone(spec, image_size=image_size, weights="imagenet")
        self.model = build_classifier(self.backbone, spec.preprocessing, self.num_classes, image_size, dropout=0.0)
        self.extractor = feature_extractor(self.model)
        self.splits = {split: self.load(split, image_size) for split in ("train", "val", "test")}

    def load(self, split: str, size: int):
        from finetune.data import load_split

        return load_split(self.data, split, size, cache=True, verbose=0)

    def features(self, images) -> np.ndarray:
        return self.extractor.predict(np.asarray(images, np.float32), batch_size=64, verbose=0)

    def augmented_features(self, preset: str, overrides: dict, copies: int):
        """Features and soft labels of `copies` augmented passes over the training images."""
        import augment
        from finetune.data import make_dataset

        options = augment.resolve(preset, **overrides)
        train = self.splits["train"]
        if not options.image_operations() and not options.mixing():
            features = self.features(train.images)
            return np.tile(features, (copies, 1)), np.tile(np.eye(self.num_classes)[train.labels], (copies, 1))
        features, targets = [], []
        for copy in range(copies):
            dataset = make_dataset(train.images, train.labels, self.batch_size, shuffle=True, seed=copy,
                                   augment=augment.build_augmenter(options, seed=copy))
            dataset = augment.mix_dataset(dataset, self.num_classes, options.mixup, options.cutmix, seed=copy)
            for images, soft in dataset:
                features.append(self.extractor.predict_on_batch(images))
                targets.append(soft.numpy())
        return np.concatenate(features), np.concatenate(targets)


def fit_head(features, targets, val_features, val_labels, c_grid=(0.01, 0.1, 1.0, 10.0), seed: int = 0):
    """Multinomial logistic regression on standardised features; a soft label is rows weighted by it.

    Returns (kernel, bias) on raw features and the chosen C (best validation accuracy, then log-likelihood).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mean, scale = features.mean(0), features.std(0) + 1e-6
    rows, columns = np.nonzero(targets > 1e-6)
    standardised = (features[rows] - mean) / scale
    labels, weights = columns, targets[rows, columns]
    val_standardised = (val_features - mean) / scale
    best = None
    for c in c_grid:
        classifier = LogisticRegression(C=c, max_iter=500, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(standardised, labels, sample_weight=weights)
        probabilities = classifier.predict_proba(val_standardised)
        accuracy = float(np.mean(classifier.classes_[probabilities.argmax(1)] == val_labels))
        log_likelihood = float(np.mean(np.log(probabilities[np.arange(len(val_labels)), val_labels] + 1e-12)))
        if best is None or (accuracy, log_likelihood) > best[0]:
            best = ((accuracy, log_likelihood), c, classifier)
    _, c, classifier = best
    kernel = (classifier.coef_ / scale).T
    bias = classifier.intercept_ - (classifier.coef_ * (mean / scale)).sum(1)
    return kernel.astype(np.float32), bias.astype(np.float32), c


def _subset(labels, per_class: int) -> np.ndarray:
    """The first `per_class` indices of each class (in the split's order, which is the same at every size)."""
    return np.sort(np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)]))


def _keep_other_sets(name: str, rows: list[dict], sets) -> list[dict]:
    """Rows of earlier runs for data sets not run now, then this run's: parts can be run one data set at a time."""
    import json

    from common import RESULTS_DIR

    path = RESULTS_DIR / f"{name}.json"
    earlier = json.loads(path.read_text())["rows"] if path.exists() else []
    return [row for row in earlier if row.get("data") not in sets] + rows


def part_accuracy(sets, image_size: int, copies: int, test_per_class: int, multiscale_per_class: int) -> None:
    from augment.tta import MODES, choose_tta

    accuracy_rows, tta_rows = [], []
    for name in sets:
        started = time.perf_counter()
        setup = Setup(name, image_size)
        val_features = setup.features(setup.splits["val"].images)
        test_features = setup.features(setup.splits["test"].images)
        heads = {}
        for setting, (preset, overrides) in SETTINGS.items():
            setting_started = time.perf_counter()
            features, targets = setup.augmented_features(preset, overrides, copies)
            kernel, bias, c = fit_head(features, targets, val_features, setup.splits["val"].labels)
            heads[setting] = (kernel, bias)
            test_accuracy = float(np.mean((test_features @ kernel + bias).argmax(1) == setup.splits["test"].labels))
            val_accuracy = float(np.mean((val_features @ kernel + bias).argmax(1) == setup.splits["val"].labels))
            accuracy_rows.append({"data": name, "augmentation": setting, "val_accuracy": round(val_accuracy, 4),
                                  "test_accuracy": round(test_accuracy, 4), "head_c": c,
                                  "seconds": round(time.perf_counter() - setting_started, 1)})
            _log(accuracy_rows[-1])
        test_labels = setup.splits["test"].labels
        test_subset = _subset(test_labels, test_per_class)
        multiscale_subset = _subset(test_labels, multiscale_per_class)
        cache: dict[tuple[str, int], np.ndarray] = {}

        def images_at(split):
            def load(size):
                if (split, size) not in cache:
                    cache[(split, size)] = np.asarray(setup.load(split, size).images)
                return cache[(split, size)]
            return load

        def test_at(indices):
            return lambda size: images_at("test")(size)[indices]

        for setting in TTA_SETTINGS:
            kernel, bias = heads[setting]
            setup.model.get_layer("classifier").set_weights([kernel, bias])
            chosen, val_accuracies = choose_tta(setup.model, images_at("val"), setup.splits["val"].labels)
            _, test_accuracies = choose_tta(setup.model, test_at(test_subset), test_labels[test_subset],
                                            modes=[mode for mode in MODES if mode != "multiscale"])
            _, multiscale_accuracies = choose_tta(setup.model, test_at(multiscale_subset), test_labels[multiscale_subset],
                                                  modes=["none", "multiscale"])
            for mode in MODES:
                row = {"data": name, "trained_with": setting, "tta": mode,
                       "val_accuracy": round(val_accuracies[mode], 4) if mode in val_accuracies else "",
                       "test_accuracy": round(test_accuracies[mode], 4) if mode in test_accuracies else "",
                       "auto_chose": "yes" if mode == chosen else ""}
                if mode in ("none", "multiscale"):
                    row["test_accuracy_small"] = round(multiscale_accuracies[mode], 4)
                tta_rows.append(row)
                _log(row)
        _log(f"{name}: {time.perf_counter() - started:.0f} s")
    notes = (
        f"ImageNet MobileNetV2 (torchvision weights) frozen at {image_size} px; a multinomial logistic-regression head "
        f"(C chosen on validation accuracy) on the features of {copies} augmented copies of every training image "
        "(the same number for every setting; 'none' repeats the unaugmented images); mixed images count with their "
        "soft labels. Validation and test accuracy on whole images (TTA none). Training images per class: 30; "
        "validation: 10; test: all of the test split. One seed: differences of a point or two are within noise "
        "(textures test: 90 images, 1.1 points each; fashion_mnist: 1000; digits: 1340). Textures is solved by every "
        "setting at this size. The backbone is not finetuned here (see augment_finetune for that), so this measures "
        "what augmentation does to a head on fixed features."
    )
    accuracy_rows = _keep_other_sets("augment_accuracy", accuracy_rows, sets)
    tta_rows = _keep_other_sets("augment_tta_accuracy", tta_rows, sets)
    save_results("augment_accuracy", accuracy_rows, ["data", "augmentation", "val_accuracy", "test_accuracy", "head_c",
                                                     "seconds"], notes)
    tta_notes = (
        f"The heads of augment_accuracy for: no augmentation; `light` (crops of 64-100% of the area and flips: the "
        f"five/ten-crop views are 77% of the area); ResNet scale jitter 256-480 with flips (the multiscale views). "
        f"test_accuracy: {test_per_class} test images per class; test_accuracy_small: {multiscale_per_class} per "
        f"class, for multiscale (50 views per image) and none on the same images. auto_chose: the mode `choose_tta` "
        "picked on the validation images (default candidates: all but multiscale), ties to the cheaper mode. "
        "Views are cut from the original files resized whole to each mode's source size, as `finetune evaluate --tta` does."
    )
    save_results("augment_tta_accuracy", tta_rows, ["data", "trained_with", "tta", "val_accuracy", "test_accuracy",
                                                    "test_accuracy_small", "auto_chose"], tta_notes)


def part_finetune(sets, image_size: int, epochs: int, learning_rate: float = 1e-4, seed: int = 0) -> None:
    """Finetuning the top 2 groups for `epochs` epochs with each augmentation, from the same head."""
    import keras

    import augment
    from finetune.data import make_dataset
    from finetune.head import fit_linear_head
    from finetune.freezing import unfreeze_top_groups
    from finetune.zoo import get_spec

    rows = []
    spec = get_spec("mobilenet_v2_torchvision")
    for name in sets:
        setup = Setup(name, image_size)
        train, val, test = setup.splits["train"], setup.splits["val"], setup.splits["test"]
        head = fit_linear_head(setup.features(train.images), train.labels, setup.num_classes,
                               setup.features(val.images), val.labels, seed=seed)
        setup.model.get_layer("classifier").set_weights([head.kernel, head.bias])
        start_weights = setup.model.get_weights()
        unfreeze_top_groups(setup.backbone, spec, 2)
        rows.append({"data": name, "augmentation": "(head alone, before finetuning)",
                     "test_accuracy": round(float(np.mean(setup.model.predict(test.images.astype(np.float32), verbose=0)
                                                          .argmax(1) == test.labels)), 4)})
        _log(rows[-1])
        for setting, (preset, overrides) in SETTINGS.items():
            started = time.perf_counter()
            keras.utils.set_random_seed(seed)
            setup.model.set_weights(start_weights)
            options = augment.resolve(preset, **overrides)
            train_data = make_dataset(train.images, train.labels, 32, shuffle=True, seed=seed,
                                      augment=augment.build_augmenter(options, seed=seed))
            train_data = augment.mix_dataset(train_data, setup.num_classes, options.mixup, options.cutmix, seed=seed)
            loss, metrics = augment.loss_and_metrics(soft_labels=True)
            setup.model.compile(keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
            setup.model.fit(train_data, epochs=epochs, verbose=0)
            predictions = setup.model.predict(test.images.astype(np.float32), batch_size=64, verbose=0).argmax(1)
            val_predictions = setup.model.predict(val.images.astype(np.float32), batch_size=64, verbose=0).argmax(1)
            rows.append({"data": name, "augmentation": setting,
                         "val_accuracy": round(float(np.mean(val_predictions == val.labels)), 4),
                         "test_accuracy": round(float(np.mean(predictions == test.labels)), 4),
                         "seconds": round(time.perf_counter() - started, 1)})
            _log(rows[-1])
    rows = _keep_other_sets("augment_finetune", rows, sets)
    notes = (
        f"ImageNet MobileNetV2 (torchvision weights) at {image_size} px: the linear head fit on unaugmented features "
        f"(as `finetune train` does), then the top 2 freeze groups and the head finetuned for exactly {epochs} epochs "
        f"(Adam {learning_rate:g}, batch 32, BatchNorm frozen, no early stopping) with each augmentation, from the same "
        "weights; test accuracy on whole images (TTA none). 30 training images per class, one seed."
    )
    save_results("augment_finetune", rows, ["data", "augmentation", "val_accuracy", "test_accuracy", "seconds"], notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["pipeline", "tta_cost", "accuracy", "finetune"],
                        choices=["pipeline", "tta_cost", "accuracy", "finetune"])
    parser.add_argument("--epochs", type=int, default=8, help="finetuning epochs of the finetune part")
    parser.add_argument("--sets", nargs="+", default=["textures", "fashion_mnist"])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--copies", type=int, default=5, help="augmented copies (epochs) of the training images")
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--multiscale-per-class", type=int, default=10)
    arguments = parser.parse_args()
    if "pipeline" in arguments.parts:
        part_pipeline()
    if "tta_cost" in arguments.parts:
        part_tta_cost()
    if "accuracy" in arguments.parts:
        part_accuracy(arguments.sets, arguments.image_size, arguments.copies, arguments.test_per_class,
                      arguments.multiscale_per_class)
    if "finetune" in arguments.parts:
        part_finetune(arguments.sets, arguments.image_size, arguments.epochs)


if __name__ == "__main__":
    main()
