"""The app under load with a real run: N browser sessions upload at once, latency and the server's memory.

Trains the demo run (bundled textures, MobileNetV2 with the imported ImageNet weights, 128 px)
unless --run is given, serves the app on 127.0.0.1, and has 1 session, then N sessions at once,
each upload one test image of the bundled sample (each session its own image, checked against
what `app.uploads` predicts for it). Reports p50/p95/max seconds from upload to answer and the
server's peak resident memory (VmHWM).

    python benchmarks/bench_app_load.py [--sessions 20] [--run RUN_DIR]    # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fresh_home, save_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--run", type=Path, default=None, help="a run folder (default: train the demo run)")
    arguments = parser.parse_args()
    import finetune
    from finetune.cli import SAMPLE_DIR
    from tests.app.load import drive_sessions, expected_uploads, peak_memory_mb, percentiles
    from tests.app.test_app_browser import serve_app

    work = Path(tempfile.mkdtemp(prefix="bench-app-load-"))
    try:
        os.environ["FINETUNE_HOME"] = str(fresh_home(work))
        if arguments.run is None:
            run = finetune.train(SAMPLE_DIR, out=str(work / "models" / "demo"), image_size=128, epochs=0, verbose=0)
        else:
            shutil.copytree(arguments.run, work / "models" / arguments.run.name, ignore=shutil.ignore_patterns("backup"))
            run = finetune.load_run(work / "models" / arguments.run.name)
        paths = sorted((SAMPLE_DIR / "test").glob("*/*"))
        images = {f"{index:02d}-{path.parent.name}-{path.name}": path.read_bytes()
                  for index, path in zip(range(arguments.sessions), paths * (1 + arguments.sessions // len(paths)))}
        uploads = expected_uploads(run, images)
        rows, servers = [], []
        with serve_app(work / "models", work, on_start=servers.append) as url:
            for count in (1, arguments.sessions):
                results = drive_sessions(url, uploads[:count], timeout_s=300)
                figures = percentiles([result.seconds for result in results])
                rows.append({"sessions at once": count, "answered right": sum(result.ok for result in results),
                             "p50 s": round(figures["p50_s"], 2), "p95 s": round(figures["p95_s"], 2),
                             "max s": round(figures["max_s"], 2),
                             "server peak memory MB": round(peak_memory_mb(servers[0].pid))})
                print(rows[-1], [result.problem for result in results if not result.ok], flush=True)
        save_results("app_load", rows, list(rows[0]),
                     notes=f"Run: {run.directory.name} ({run.config['model']['backbone']}, {run.image_size} px, "
                           f"TTA none). Each session a Chromium page (one browser, Playwright's asyncio API) "
                           "uploading one image; seconds from the upload to its answer on the page; the memory is the "
                           "Streamlit server's peak so far (VmHWM), after the 1-session row and then after all.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
