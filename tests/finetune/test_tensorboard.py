"""`--tensorboard`: a tiny finetuning run (weights none, 48 px, 1 epoch) writes TensorBoard's event files."""

import importlib.util
import json

import pytest

import finetune
from finetune.cli import build_parser
from finetune.config import TrainConfig
from tests.conftest import write_image_folder

TINY = dict(backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=48, batch_size=8, verbose=0, tta="none")


@pytest.mark.slow  # about 20 s: a backbone built, features, one epoch
def test_tensorboard_logs_the_finetuning_epochs_into_the_run(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8)
    run = finetune.train(data, out=str(tmp_path / "run"), epochs=1, strategy="finetune_top", tensorboard=True, **TINY)
    events = sorted(path.relative_to(run.directory / "tensorboard").parts[0]
                    for path in (run.directory / "tensorboard").rglob("events.out.tfevents.*"))
    assert events == ["train", "validation"]
    assert json.loads((run.directory / "config.json").read_text())["tensorboard"] is True


def test_tensorboard_is_off_by_default_and_a_flag_of_the_training_commands():
    assert TrainConfig.tensorboard is False
    for command in (["train", "x"], ["search", "x"], ["demo"]):
        assert build_parser().parse_args(command).tensorboard is False
        assert build_parser().parse_args([*command, "--tensorboard"]).tensorboard is True


def test_without_the_tensorboard_package_it_is_refused_before_any_work(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "tensorboard" else find_spec(name, *rest))
    with pytest.raises(finetune.FinetuneError, match="pip install tensorboard. Received: tensorboard=True"):
        finetune.train(tmp_path / "no-data-needed", out=str(tmp_path / "run"), tensorboard=True, **TINY)
    assert not (tmp_path / "run").exists()
