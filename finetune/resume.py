"""What a run folder given as `--out` holds: nothing yet, an unfinished run (it resumes) or a finished one.

A finished run (its metrics.json, written last, is there) is never trained over without
`overwrite`: then its files are removed first, metrics.json last, so that a kill in between still
leaves a folder that reads as finished. An unfinished one (killed mid-way) is trained again in place:
its decoded images and features are cached, and `finetune.checkpoint` resumes the finetuning from
the last finished epoch (with `overwrite` it starts afresh).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.files import (
    BACKUP_DIR,
    CALIBRATION_FILE,
    CONFIG_FILE,
    CONFUSION_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    POLICY_FILE,
    SKIPPED_FILE,
    SNAPSHOT_DIR,
    TENSORBOARD_DIR,
    remove_stale_temporaries,
)

# A run's files, removed by `overwrite`: metrics.json, the mark of a finished run, goes last.
RUN_FILES = (BACKUP_DIR, SNAPSHOT_DIR, TENSORBOARD_DIR, HISTORY_FILE, MODEL_FILE, CONFIG_FILE, POLICY_FILE, LABELS_FILE,
             SKIPPED_FILE, CURVES_FILE, CONFUSION_FILE, CALIBRATION_FILE, METRICS_FILE)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / METRICS_FILE).is_file()


def is_unfinished(run_dir: Path) -> bool:
    """A folder a killed run left: files of a run, but no metrics.json yet."""
    run_dir = Path(run_dir)
    return not is_finished(run_dir) and any((run_dir / name).exists() for name in RUN_FILES)


def check_out(out, *, overwrite: bool) -> str:
    """'new', 'resume' or 'overwrite' for the folder `out`; refuses a finished run's folder without `overwrite`.

    With `overwrite`, the run's files (finished or not: an unfinished one then starts afresh) are
    removed, and nothing else in the folder is touched.
    """
    if not out:
        return "new"
    run_dir = Path(out)
    if not is_finished(run_dir) and not is_unfinished(run_dir):
        return "new"
    if not is_finished(run_dir) and not overwrite:
        remove_stale_temporaries(run_dir, own=True)  # what the killed run was writing: never renamed into place
        return "resume"
    if not overwrite:
        raise FinetuneError(
            f"{run_dir} holds a finished run (its {METRICS_FILE} is written), which training would replace. Pass "
            f"--overwrite (overwrite=True) to train it again in place, or another --out. Received: out={str(out)!r}"
        )
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    remove_stale_temporaries(run_dir, own=True)
    return "overwrite"
