"""`finetune explain`: each image's prediction and its Grad-CAM heat map (`finetune.explain`), as pictures.

    explain(run, ["cat.jpg", "more/"], out="explained/")   # explained/cat.explain.png, ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError
from finetune.explain import heat_maps, overlay


def explain_arrays(run, images, *, tta: str = "none", unknown="auto") -> list[dict]:
    """Each decoded image's prediction and its heat map for the top label: [{"prediction", "heat", "overlay"}]."""
    from finetune.data import resize_image
    from finetune.forward import is_keras_model
    from finetune.inference import predict_arrays

    model = run.model
    if not is_keras_model(model):
        raise FinetuneError(
            f"Heat maps need a Keras model; {run.directory} holds a {type(model).__name__} export. Explain the training "
            "run it came from, or an export with --format keras."
        )
    predictions = predict_arrays(run, images, tta=tta, top_k=1, unknown=unknown)
    if not predictions:
        return []
    resized = np.stack([resize_image(image, run.image_size) for image in images])
    top = [run.labels.index(item.predictions[0]["label"]) for item in predictions]
    maps = heat_maps(model, resized, top)
    return [{"prediction": item, "heat": heat, "overlay": overlay(_rgb(image), heat)}
            for item, heat, image in zip(predictions, maps, images)]


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3]


def explain(run_or_path, inputs, out, *, tta: str = "auto", unknown="auto", max_side: int = 512) -> list[dict]:
    """Writes DIR/<image name>.explain.png for each image: the image and its heat map for the top label, side by side.

    Args:
        run_or_path: a run (or its directory).
        inputs: image files and folders.
        out: the folder for the pictures (made if missing).
        tta: the prediction's test-time augmentation (the heat map is of the whole image). Defaults to "auto".
        unknown: as in `finetune.predict`. Defaults to "auto".
        max_side: pictures are drawn at most this large. Defaults to 512.

    Returns:
        [{"path", "out", "answer", "label", "probability", "unknown"}], or {"path", "error"} for
        an image that could not be read.
    """
    from finetune.data import BadImageError, list_images, load_image
    from finetune.run import Run, load_run

    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    out = Path(out)
    paths = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        item = Path(item)
        if not item.exists():
            raise FinetuneError(f"{item} does not exist. Pass image files or folders of images.")
        paths += list_images(item) if item.is_dir() else [item]
    results = []
    for path in paths:
        try:
            image = _shrunk(load_image(path), max_side)
        except BadImageError as error:
            results.append({"path": str(path), "error": error.reason})
            continue
        explained = explain_arrays(run, [image], tta=tta, unknown=unknown)[0]
        target = out / f"{path.stem}.explain.png"
        _draw(image, explained, target)
        best = explained["prediction"].predictions[0]
        results.append({"path": str(path), "out": str(target), "answer": explained["prediction"].answer,
                        "label": best["label"], "probability": best["probability"],
                        "unknown": explained["prediction"].unknown})
    return results


def _shrunk(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    return np.asarray(Image.fromarray(image).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                                    Image.BILINEAR))


def _draw(image: np.ndarray, explained: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finetune.curves import save_figure

    figure, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(_rgb(image))
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(explained["overlay"])
    best = explained["prediction"].predictions[0]
    axes[1].set_title(f"why: {explained['prediction'].answer}" + ("" if explained["prediction"].unknown
                                                                  else f" ({best['probability']:.1%})"), fontsize=10)
    for axis in axes:
        axis.axis("off")
    save_figure(figure, target)
