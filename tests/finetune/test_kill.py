"""kill -9 while saving a snapshot and while exporting: started again, the run and the export end whole.

The mid-epoch kill and the kill while writing model.keras are in test_resume.py. Here a real
SIGKILL lands while a snapshot member is half written (the process kills itself right after the
temporary file is written, before its rename: the worst moment) and while `finetune export` runs.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import finetune
from finetune.ensemble import load_members
from finetune.files import SNAPSHOT_DIR, snapshot_paths
from tests.conftest import write_image_folder

pytestmark = pytest.mark.slow

OPTIONS = ["--backbone", "mobilenet_v2", "--weights", "none", "--alpha", "0.35", "--image-size", "32",
           "--batch-size", "8", "--strategy", "finetune_top", "--epochs", "6", "--snapshots", "3",
           "--warmup-epochs", "0", "--tta", "none", "--no-cache", "--quiet"]


def _leftovers(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if ".tmp" in path.name)


def _cli(*arguments, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune.cli", *arguments], capture_output=True, text=True,
                          timeout=timeout)


def test_a_run_killed_while_saving_a_snapshot_resumes_with_every_member_and_so_does_its_export(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=10, size=32)
    run = tmp_path / "run"
    # Snapshot 2 (after epoch 4 of 6, cycles of 2): written to its temporary file, then the process is killed.
    script = ("import os, signal, sys\n"
              "import finetune.files as files\n"
              "original = files.save_model_atomic\n"
              "def save(model, path):\n"
              "    if path.name == 'snapshot_02.keras':\n"
              "        model.save(files.temporary_path(path))\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    original(model, path)\n"
              "files.save_model_atomic = save\n"
              "from finetune.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    killed = subprocess.run([sys.executable, "-c", script, "train", str(data), *OPTIONS, "--out", str(run)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [path.name for path in snapshot_paths(run)] == ["snapshot_01.keras"]  # the half-written one is no member
    assert any(".tmp-" in name for name in _leftovers(run / SNAPSHOT_DIR))
    assert not (run / "metrics.json").exists()

    again = _cli("train", str(data), *OPTIONS, "--out", str(run))
    assert again.returncode == 0, again.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    # The kill came in epoch 4's end, before its checkpoint: epoch 4 is trained again (and its snapshot saved), not 1-3.
    assert metrics["stages"]["finetune"]["resumed_at_epoch"] == 3
    assert [path.name for path in snapshot_paths(run)] == ["snapshot_01.keras", "snapshot_02.keras", "snapshot_03.keras"]
    assert len(metrics["snapshots"]["paths"]) == 3 and len(metrics["snapshots"]["val"]["members"]) == 3
    for model in load_members(snapshot_paths(run)):  # each member whole: it loads (safe mode) and predicts
        assert model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).shape == (1, 2)
    assert _leftovers(run) == []

    # Its ensemble exported, and that killed too.
    _export_killed_at_any_moment(run, tmp_path / "exports" / "ensemble")


def _export_killed_at_any_moment(run, out) -> None:
    """An export killed mid-write leaves no export, or the earlier one whole, and runs again."""
    command = [sys.executable, "-m", "finetune.cli", "export", str(run), "--members", "snapshots",
               "--format", "keras", "--out", str(out)]
    # Killed as soon as its temporary folder appears (mid-write): first with no export at `out` yet, then
    # with a finished one there, which must survive whole. Neither leaves a half export at `out`.
    for earlier in (False, True):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if list(out.parent.glob(".tmp-export-*")):
                break
            time.sleep(0.005)
        assert process.poll() is None, "the export ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert (out / "export.json").is_file() == earlier  # the earlier export whole, or none at all
        assert _leftovers(out.parent)  # what it was writing, left by the killed process
        finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr[-2000:]
        assert _leftovers(out.parent) == []  # the killed export's temporaries removed
        sidecar = json.loads((out / "export.json").read_text())
        assert sidecar["parity"]["passed"] and len(sidecar["members"]) == 3
        exported = finetune.load_run(out).model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0)
        assert np.asarray(exported).shape == (1, 2)
