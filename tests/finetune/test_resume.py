"""A run folder given as --out: a finished run is never trained over without --overwrite; an unfinished one continues."""

import pytest

import finetune
from finetune.errors import FinetuneError
from finetune.resume import check_out
from tests.conftest import write_image_folder

TINY = dict(backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=32, epochs=0, verbose=0)


def test_a_finished_run_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=6, size=32)
    out = tmp_path / "run"
    finetune.train(data, out=out, **TINY)
    metrics, history = (out / "metrics.json").read_text(), (out / "history.csv").read_text()
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(FinetuneError, match=r"finished run.*--overwrite"):
        finetune.train(data, out=out, **TINY)
    assert (out / "metrics.json").read_text() == metrics  # untouched

    (out / "snapshots").mkdir()  # a stale file of the old run, which must not survive into the new one
    (out / "snapshots" / "snapshot_1.keras").write_text("old")
    finetune.train(data, out=out, overwrite=True, **TINY)
    assert (out / "history.csv").read_text() == history  # rewritten, not appended to the old rows
    assert not (out / "snapshots").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"  # only the run's own files are removed


def test_the_state_of_an_out_folder(tmp_path):
    assert check_out(None, overwrite=False) == "new"
    assert check_out(tmp_path / "missing", overwrite=False) == "new"
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "labels.json").write_text("[]")
    (tmp_path / "killed" / "backup").mkdir()
    assert check_out(tmp_path / "killed", overwrite=False) == "resume"
    (tmp_path / "killed" / "metrics.json").write_text("{}")
    with pytest.raises(FinetuneError, match="Received: out="):
        check_out(tmp_path / "killed", overwrite=False)
    assert check_out(tmp_path / "killed", overwrite=True) == "overwrite"
    assert sorted(path.name for path in (tmp_path / "killed").iterdir()) == []
