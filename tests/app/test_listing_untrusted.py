"""The app serves models only from its models folder: no links out of it, no export naming a model elsewhere."""

import json
import os

import pytest

import finetune
from app import listing
from tests.app.conftest import write_colour_run


@pytest.fixture
def models_and_elsewhere(tmp_path):
    """models/ with one run in place, and a run outside it (elsewhere/) that links could point to."""
    models = tmp_path / "models"
    write_colour_run(models / "in-place")
    write_colour_run(tmp_path / "elsewhere" / "outside")
    return models, tmp_path / "elsewhere"


def listed(models):
    entries, problems = listing.find_models(models)
    problems = {os.path.relpath(item["path"], models): item["reason"] for item in problems}
    return [entry.name for entry in entries], problems


def test_a_link_to_a_run_outside_the_models_folder_is_not_served(models_and_elsewhere):
    models, elsewhere = models_and_elsewhere
    os.symlink(elsewhere / "outside", models / "linked")
    os.symlink(models, models / "loop")  # models/loop/in-place: the same run again, through a link
    names, problems = listed(models)
    assert names == ["in-place"]
    assert set(problems) == {"linked", "loop/in-place", "loop/linked"}
    assert f"is a link to {elsewhere / 'outside'}" in problems["linked"]
    assert "serves only what lies in its models folder" in problems["linked"] and "Move or copy" in problems["linked"]


def test_a_model_file_linked_in_from_elsewhere_is_not_served(models_and_elsewhere):
    models, elsewhere = models_and_elsewhere
    (models / "in-place" / "model.keras").unlink()
    os.symlink(elsewhere / "outside" / "model.keras", models / "in-place" / "model.keras")
    names, problems = listed(models)
    assert names == [] and f"model.keras is a link to {elsewhere / 'outside' / 'model.keras'}" in problems["in-place"]


def test_a_models_folder_that_is_itself_a_link_is_served(models_and_elsewhere, tmp_path):
    models, _ = models_and_elsewhere
    os.symlink(models, tmp_path / "models-link")
    assert listed(tmp_path / "models-link") == (["in-place"], {})


@pytest.mark.parametrize("artefact", ["../../elsewhere/outside/model.keras", "/etc/passwd", ".."])
def test_an_export_naming_a_model_outside_its_folder_is_refused(models_and_elsewhere, artefact):
    models, _ = models_and_elsewhere
    export = models / "exported"
    export.mkdir()
    sidecar = {"format": "keras", "artefact": artefact, "image_size": 32, "labels": ["blue", "red"], "members": []}
    (export / "export.json").write_text(json.dumps(sidecar))
    names, problems = listed(models)
    assert names == ["in-place"]
    assert f"names its model {artefact!r}, which is not in {export}: refused" in problems["exported"]
    with pytest.raises(finetune.FinetuneError, match="Export it again"):
        finetune.load_run(export)
