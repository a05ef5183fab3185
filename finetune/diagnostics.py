"""The course's babysitting checks, run before a long training: `finetune check DATA_DIR`.

    1. initial loss: with regularisation off, a fresh classifier should score about -ln(1/C);
    2. overfit a small subset: 20 images must be learnt to ~100% training accuracy, or the
       data, labels, model or loss are broken;
    3. learning-rate range test: the loss while the rate grows exponentially batch by batch,
       plotted, with a suggested rate (where the loss is lowest, divided by 10).

Each returns a `CheckResult` with pass/fail and an explanation; the CLI prints them.

Example:

```python
results = run_checks(DataConfig("photos/", image_size=48), ModelConfig("mobilenet_v2", weights="none", alpha=0.35))
print(format_checks(results))
```

The settings of the checks (subset size, epochs, range-test rates and steps) are a `CheckConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from finetune.config import CheckConfig, DataConfig, ModelConfig, TrainConfig
from finetune.errors import FinetuneError


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str  # one line with the measured numbers
    explanation: str  # what it means and what to do
    details: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelRecipe:
    """How to build a fresh classifier for a check: the zoo backbone, top groups unfrozen, no dropout.

    Args:
        model: the backbone, its weights and alpha (its dropout is not used: the checks run
            without regularisation). Defaults to `ModelConfig()`.
        image_size: input size; None: the backbone's default. Defaults to None.
        num_classes: outputs of the classifier. Defaults to 2.
        unfreeze_groups: top freeze groups of a pretrained backbone that train. Defaults to
            `CheckConfig.unfreeze_groups` (2).
        seed: each build (plus its `seed_offset`) starts from this seed. Defaults to 0.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    image_size: int | None = None
    num_classes: int = 2
    unfreeze_groups: int = CheckConfig.unfreeze_groups
    seed: int = TrainConfig.seed

    def build(self, seed_offset: int = 0):
        import keras

        from finetune import zoo
        from finetune.freezing import unfreeze_top_groups
        from finetune.model import build_classifier

        keras.utils.set_random_seed(self.seed + seed_offset)
        spec = zoo.get_spec(self.model.backbone)
        image_size = self.image_size or spec.default_image_size
        backbone = zoo.build_backbone(spec, image_size=image_size, weights=self.model.weights, alpha=self.model.alpha)
        # Regularisation off (dropout 0), as the course asks for these checks.
        model = build_classifier(backbone, spec.preprocessing, self.num_classes, image_size, dropout=0.0)
        if zoo.is_random_initialisation(self.model.weights):
            # From scratch every layer learns, BatchNorm included: a random backbone with frozen
            # BatchNorm shrinks its activations to ~1e-11 and nothing can be learnt.
            backbone.trainable = True
        elif self.unfreeze_groups > 0:
            unfreeze_top_groups(backbone, spec, self.unfreeze_groups)
        else:
            backbone.trainable = False
        return model


def _compile(model, learning_rate):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )


def _log_loss(probabilities, labels) -> float:
    picked = np.asarray(probabilities)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def check_initial_loss(
    model, images, labels, num_classes: int, tolerance: float = CheckConfig.initial_loss_tolerance,
    batch_size: int = TrainConfig.batch_size, small_head: bool = True,
) -> CheckResult:
    """The loss of an untrained classifier against -ln(1/C), within `tolerance` (relative).

    With `small_head` (the course: "initialise with small parameters"), the layer named
    "classifier" is first measured as Keras initialised it, then re-initialised with small
    weights and measured again; the check is on the second figure, which tests the labels, the
    softmax and the loss. The first is reported: large initial logits cost a plateau at the start.
    """
    expected = math.log(num_classes)
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)

    def measure():
        return _log_loss(model.predict(images, batch_size=batch_size, verbose=0), labels)

    default_loss = None
    if small_head:
        classifier = model.get_layer("classifier")
        default_loss = measure()
        kernel, bias = classifier.get_weights()
        rng = np.random.default_rng(0)
        classifier.set_weights([rng.normal(0, 1e-3, kernel.shape).astype(kernel.dtype), np.zeros_like(bias)])
    loss = measure()
    ratio = loss / expected
    passed = abs(ratio - 1.0) <= tolerance
    summary = f"initial loss {loss:.3f}, expected -ln(1/{num_classes}) = {expected:.3f} ({ratio:.2f}x)"
    if default_loss is not None:
        summary += f"; with Keras' default head initialisation {default_loss:.3f} ({default_loss / expected:.2f}x)"
    if passed:
        explanation = "A fresh classifier spreads its probability evenly over the classes, as it should."
        if default_loss is not None and default_loss > (1 + tolerance) * expected:
            explanation += (
                " Keras' default initialisation of the head starts confidently wrong on these features (large logits), "
                "which costs a plateau at the start of training; finetune avoids it by fitting the head on cached "
                "features first."
            )
    elif ratio > 1:
        explanation = (
            "The fresh classifier is confidently wrong: its initial logits are large. That slows the first epochs (a "
            "plateau, then a drop). Initialise the last layer smaller (e.g. zeros), and check that the labels and "
            "the loss match (sparse labels, softmax output)."
        )
    else:
        explanation = (
            "The loss is below chance before any training: the labels may leak into the images (a class told "
            "apart by a border or file format), or the loss is not computed on these labels."
        )
    details = {"loss": loss, "expected": expected, "default_head_loss": default_loss, "images": len(labels)}
    return CheckResult("initial_loss", passed, summary, explanation, details)


def _subset(labels, count: int, seed: int) -> np.ndarray:
    """`count` indices, taking the classes in turn so each is represented."""
    rng = np.random.default_rng(seed)
    by_class = [list(rng.permutation(np.flatnonzero(labels == label))) for label in np.unique(labels)]
    chosen = []
    while len(chosen) < count and any(by_class):
        for indices in by_class:
            if indices and len(chosen) < count:
                chosen.append(indices.pop())
    return np.array(sorted(chosen), dtype=np.int64)


def check_overfit_subset(
    recipe, images, labels, count: int = CheckConfig.subset_size, max_epochs: int = CheckConfig.overfit_epochs,
    learning_rate: float = CheckConfig.overfit_learning_rate,
) -> CheckResult:
    """Trains a fresh classifier on `count` images alone; it should reach ~100% accuracy on them.

    `recipe` is a `ModelRecipe`, or anything whose `build(seed_offset)` returns a fresh classifier.
    """
    import keras

    labels = np.asarray(labels, dtype=np.int64)
    chosen = _subset(labels, count, getattr(recipe, "seed", 0))
    subset_images, subset_labels = np.asarray(images[chosen], dtype=np.float32), labels[chosen]
    model = recipe.build(seed_offset=1)
    _compile(model, learning_rate)

    class StopWhenLearnt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs and logs.get("accuracy", 0) >= 1.0 and logs.get("loss", 1) < 0.05:
                self.model.stop_training = True

    history = model.fit(
        subset_images, subset_labels, batch_size=len(chosen), epochs=max_epochs, callbacks=[StopWhenLearnt()], shuffle=False, verbose=0
    )
    # The course's "training accuracy": measured as the model trains (BatchNorm of a model trained
    # from scratch uses batch statistics there, and its moving averages lag behind after few steps).
    accuracy = float(history.history["accuracy"][-1])
    loss = float(history.history["loss"][-1])
    epochs = len(history.history["loss"])
    passed = accuracy >= 0.99
    summary = f"{len(chosen)} images: training accuracy {accuracy:.1%}, loss {loss:.3f} after {epochs} epochs"
    if passed:
        explanation = "The model can memorise a few images: data, labels, model and loss fit together."
    else:
        explanation = (
            f"Even {len(chosen)} images could not be learnt in {max_epochs} epochs. Something is broken before any "
            "tuning matters: check that the labels belong to the images (`finetune check-data`), that the images "
            "are not blank, or raise the learning rate; with a frozen backbone, unfreeze a group (--unfreeze-groups)."
        )
    details = {"images": len(chosen), "accuracy": accuracy, "loss": loss, "epochs": epochs, "learning_rate": learning_rate}
    return CheckResult("overfit_subset", passed, summary, explanation, details)


def _smooth(values, beta: float = 0.9) -> np.ndarray:
    """fastai's exponentially weighted average with bias correction."""
    average, smoothed = 0.0, []
    for index, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        smoothed.append(average / (1 - beta ** (index + 1)))
    return np.array(smoothed)


def learning_rate_range_test(
    recipe,
    images,
    labels,
    batch_size: int = TrainConfig.batch_size,
    start: float = CheckConfig.range_start,
    end: float = CheckConfig.range_end,
    steps: int = CheckConfig.range_steps,
    out_png=None,
) -> CheckResult:
    """Smith's range test: one batch per rate, rates growing from `start` to `end`; stops when the loss explodes.

    Suggests the rate where the smoothed loss is lowest, divided by 10 (where it still falls fast).
    """
    import keras

    from finetune.data import make_dataset

    if not 0 < start < end:
        raise FinetuneError(f"The range test needs 0 < start < end. Received: start={start}, end={end}")
    if steps < 5:
        raise FinetuneError(f"The range test needs at least 5 steps. Received: steps={steps}")
    model = recipe.build(seed_offset=2)
    schedule = keras.optimizers.schedules.ExponentialDecay(start, steps - 1, end / start)  # rate > 1: growth
    _compile(model, schedule)
    running_means, losses = [], []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            mean = float(logs["loss"])
            running_means.append(mean)
            # Keras logs the running mean of the epoch; recover this batch's loss from it.
            loss = mean if batch == 0 else (batch + 1) * mean - batch * running_means[-2]
            losses.append(loss)
            smoothed = _smooth(losses)
            if not math.isfinite(loss) or (len(smoothed) > 5 and smoothed[-1] > 4 * smoothed.min()):
                self.model.stop_training = True

    dataset = make_dataset(images, labels, batch_size, shuffle=True, seed=getattr(recipe, "seed", 0), repeat=True)
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[Record()], shuffle=False, verbose=0)
    rates = np.array([start * (end / start) ** (step / (steps - 1)) for step in range(len(losses))])
    finite = np.isfinite(losses)
    rates, losses = rates[finite], np.array(losses)[finite]
    if len(losses) < 5:
        return CheckResult(
            "learning_rate_range", False, f"the loss blew up after {len(losses)} batches",
            f"Even the smallest rates ({start:g}) diverge: check the data and the loss first.", {},
        )
    smoothed = _smooth(losses)
    best = int(np.argmin(smoothed))
    suggested = float(rates[best] / 10)
    gradient = np.gradient(smoothed, np.log10(rates))
    steepest = float(rates[int(np.argmin(gradient[: best + 1]))])
    fell = (smoothed[0] - smoothed[best]) / smoothed[0]
    passed = fell >= 0.1
    summary = (
        f"lowest loss {smoothed[best]:.3f} at rate {rates[best]:.2g} (from {smoothed[0]:.3f}); "
        f"suggested learning rate {suggested:.2g} (steepest fall at {steepest:.2g})"
    )
    if passed:
        explanation = (
            f"The loss fell by {fell:.0%} as the rate grew and turned up at {rates[best]:.2g}. Train at about "
            f"{suggested:.2g} (a tenth of where the loss is lowest); rates near {rates[best]:.2g} will diverge."
        )
    else:
        explanation = (
            f"The loss fell only {fell:.0%} over rates {start:g} to {rates[-1]:.2g}: no rate learns much in "
            f"{len(losses)} batches. Run more steps (--range-steps), or check the data and labels first."
        )
    details = {
        "rates": rates.tolist(),
        "losses": losses.tolist(),
        "smoothed": smoothed.tolist(),
        "suggested_learning_rate": suggested,
        "steepest_learning_rate": steepest,
        "lowest_loss_learning_rate": float(rates[best]),
    }
    if out_png is not None:
        details["plot"] = str(_plot_range(rates, losses, smoothed, suggested, out_png))
    return CheckResult("learning_rate_range", passed, summary, explanation, details)


def _plot_range(rates, losses, smoothed, suggested, out_png) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finetune.curves import save_figure

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(rates, losses, alpha=0.3, label="loss per batch")
    axis.plot(rates, smoothed, label="smoothed")
    axis.axvline(suggested, color="tab:green", linestyle="--", label=f"suggested {suggested:.2g}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    top = np.nanpercentile(losses, 95)
    axis.set_ylim(max(0.0, float(np.nanmin(losses)) * 0.9), float(top) * 1.1 if np.isfinite(top) else None)
    axis.legend()
    axis.grid(alpha=0.3)
    axis.set_title("Learning-rate range test")
    return save_figure(figure, out_png)


def run_checks(
    data: DataConfig,
    model: ModelConfig,
    checks: CheckConfig | None = None,
    *,
    batch_size: int = TrainConfig.batch_size,
    seed: int = TrainConfig.seed,
    verbose: int = 0,
) -> list[CheckResult]:
    """The three checks on the training split of `data.source`; the range-test plot goes to out_dir/lr_range.png.

    Args:
        data: the images (`source`, `val_fraction`, `image_size`, `max_megapixels`, `cache`).
        model: the backbone to check (`backbone`, `weights`, `alpha`).
        checks: subset size, epochs, range-test steps and where the plot goes. Defaults to
            `CheckConfig()`.
        batch_size: images per batch. Defaults to `TrainConfig.batch_size` (32).
        seed: of the split, the subsets and the initialisation. Defaults to 0.
        verbose: 1 shows decoding progress. Defaults to 0.
    """
    from finetune import data as data_module
    from finetune import zoo

    if not data.source:
        raise FinetuneError("No data given: set `data.source` to a folder with one subfolder per class, or tfds:NAME. "
                            f"Received: data.source={data.source!r}")
    checks = checks or CheckConfig()
    spec = zoo.get_spec(model.backbone)
    image_size = data.image_size or spec.default_image_size
    source = data_module.discover(data.source, data.val_fraction, seed, max_files=data.max_files)
    train = data_module.load_split(source, "train", image_size, data.max_megapixels, cache=data.cache, verbose=verbose)
    if len(train.labels) == 0:
        raise FinetuneError(f"No readable training images in {data.source}; run `finetune check-data {data.source}`.")
    num_classes = len(source.class_names)
    recipe = ModelRecipe(model, image_size, num_classes, unfreeze_groups=checks.unfreeze_groups, seed=seed)
    labels = np.asarray(train.labels)
    first = _subset(labels, min(len(labels), max(checks.initial_loss_images, batch_size)), seed)
    results = [check_initial_loss(recipe.build(), train.images[first], labels[first], num_classes,
                                  tolerance=checks.initial_loss_tolerance, batch_size=batch_size)]
    results.append(check_overfit_subset(recipe, train.images, labels, count=min(checks.subset_size, len(labels)),
                                        max_epochs=checks.overfit_epochs, learning_rate=checks.overfit_learning_rate))
    out_png = Path(checks.out_dir) / "lr_range.png" if checks.out_dir is not None else None
    results.append(learning_rate_range_test(recipe, train.images, labels, batch_size=batch_size, start=checks.range_start,
                                            end=checks.range_end, steps=checks.range_steps, out_png=out_png))
    return results


def format_checks(results: list[CheckResult]) -> str:
    lines = []
    for result in results:
        lines.append(f"[{'PASS' if result.passed else 'FAIL'}] {result.name}: {result.summary}")
        lines.append(f"       {result.explanation}")
        if result.details.get("plot"):
            lines.append(f"       plot: {result.details['plot']}")
    return "\n".join(lines)
