"""The app under load: 20 browser sessions upload at once to one real server on 127.0.0.1.

Each session uploads its own image (a different colour mix, so a different probability) and must
see its own answer and nobody else's; the server's peak memory stays bounded. Latency percentiles
are printed (with a real run: `benchmarks/bench_app_load.py`).
"""

import numpy as np
import pytest

from tests.app.conftest import write_colour_run
from tests.app.load import drive_sessions, expected_uploads, peak_memory_mb, percentiles
from tests.app.test_app_browser import _browser_missing, serve_app

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")]

SESSIONS = 20


def colour_images(count: int) -> dict[str, bytes]:
    """`count` PNGs from blue to red, each its own mix: the colour-mean model gives each another probability."""
    import io

    from PIL import Image

    images = {}
    for index in range(count):
        share = 0.31 + 0.4 * index / count  # red share 0.31-0.69: probabilities 5%-95%, none alike
        pixels = np.zeros((24, 24, 3), np.uint8)
        pixels[..., 0], pixels[..., 2] = int(255 * share), int(255 * (1 - share))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images[f"session-{index:02d}.png"] = buffer.getvalue()
    return images


def test_twenty_sessions_uploading_at_once_each_get_their_own_answers(tmp_path):
    from finetune import load_run

    run_dir = write_colour_run(tmp_path / "models" / "colours", image_size=24)
    uploads = expected_uploads(load_run(run_dir), colour_images(SESSIONS))
    assert len({(upload.label, upload.shown) for upload in uploads}) == SESSIONS  # a mix-up shows another's figure
    servers = []
    with serve_app(tmp_path / "models", tmp_path, on_start=servers.append) as url:
        results = drive_sessions(url, uploads, timeout_s=150)
        memory = peak_memory_mb(servers[0].pid)
    failed = [f"{result.name}: {result.problem}" for result in results if not result.ok]
    assert not failed, failed
    figures = percentiles([result.seconds for result in results])
    print(f"{SESSIONS} sessions: p50 {figures['p50_s']:.2f} s, p95 {figures['p95_s']:.2f} s, "
          f"max {figures['max_s']:.2f} s; server peak memory {memory:.0f} MB")
    assert memory < 2000, f"the server's peak memory was {memory:.0f} MB with {SESSIONS} sessions"
