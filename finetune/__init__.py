"""finetune: transfer learning from ImageNet backbones on a folder of your own images.

    import finetune
    run = finetune.train("photos/", backbone="mobilenet_v2", epochs=5)
    finetune.evaluate(run, "photos_test/")["accuracy"]
    finetune.predict(run, ["cat.jpg"], top_k=3)
    run = finetune.load_run("models/photos-mobilenet_v2-20261125-120000")
"""

from finetune.errors import FinetuneError

__version__ = "0.1.0"
__all__ = ["FinetuneError", "train", "evaluate", "predict", "load_run"]


def train(data_dir: str | None = None, *, config=None, **options):
    """Trains a classifier on `data_dir` and returns the `Run`.

    Args:
        data_dir: a folder with one subfolder per class (or train/, val/, test/ splits), or
            `tfds:NAME`.
        config: a full `finetune.config.TrainConfig`; when given, `data_dir` and `options`
            override its fields.
        **options: fields of `TrainConfig` (`epochs`, `seed`, `batch_size`, `out`, ...), of
            `ModelConfig` (`backbone`, `weights`, `alpha`, `dropout`) or of `DataConfig`
            (`image_size`, `val_fraction`, `max_megapixels`, `cache`).
    """
    import dataclasses

    from finetune.config import DataConfig, ModelConfig, TrainConfig
    from finetune.pipeline import train as train_with_config

    config = dataclasses.replace(config) if config is not None else TrainConfig()
    config.data = dataclasses.replace(config.data)
    config.model = dataclasses.replace(config.model)
    if data_dir is not None:
        config.data.source = str(data_dir)
    sections = {
        "data": {field.name for field in dataclasses.fields(DataConfig)},
        "model": {field.name for field in dataclasses.fields(ModelConfig)},
    }
    top_level = {field.name for field in dataclasses.fields(TrainConfig)} - {"data", "model"}
    for name, value in options.items():
        if name in top_level:
            setattr(config, name, value)
        elif name in sections["data"]:
            setattr(config.data, name, value)
        elif name in sections["model"]:
            setattr(config.model, name, value)
        else:
            allowed = sorted(top_level | sections["data"] | sections["model"])
            raise FinetuneError(f"Unknown training option `{name}`. Allowed: {', '.join(allowed)}. Received: {name}={value!r}")
    if not config.data.source:
        raise FinetuneError("No data given. Pass a folder with one subfolder per class, or tfds:NAME. Received: data_dir=None")
    return train_with_config(config)


def evaluate(run, data_dir, **options):
    """Evaluates a run (a `Run` or its directory) on a labelled folder; see `finetune.inference.evaluate`."""
    from finetune.inference import evaluate as evaluate_run

    return evaluate_run(run, data_dir, **options)


def predict(run, inputs, **options):
    """Top-k labels of images and folders; see `finetune.inference.predict`."""
    from finetune.inference import predict as predict_images

    return predict_images(run, inputs, **options)


def load_run(path):
    """Loads a run directory written by `finetune train`."""
    from finetune.run import load_run as load

    return load(path)
