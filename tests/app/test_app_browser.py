"""The app end to end in a real browser: Debian's chromium driven by Playwright, a tiny trained model.

Needs /usr/bin/chromium (`apt-get install chromium`) and the playwright package (the `dev`
extra); `.ci/run` installs both. `playwright install` is not used: it would download browsers.
"""

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app.conftest import free_port, image_bytes
from tests.conftest import write_image_folder

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"


def _browser_missing() -> str:
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is missing: pip install -e '.[dev]' (.ci/run does)"
    return ""


pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")]


@contextlib.contextmanager
def serve_app(models_dir: Path, workdir: Path, timeout: float = 90.0, on_start=None):
    """`streamlit run app/streamlit_app.py` on a free port of 127.0.0.1; yields its URL, stops it at the end.

    `on_start`, when given, is called with the server's `subprocess.Popen` (its pid, for memory figures).
    """
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
        "--", "--models-dir", str(models_dir),
    ]  # fmt: skip
    log = open(workdir / "streamlit.log", "wb")
    # Run from the temporary folder, so that nothing the server writes lands in the repository.
    server = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(workdir)})
    if on_start is not None:
        on_start(server)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {(workdir / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 900):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def test_upload_in_a_real_browser(tmp_path):
    import finetune
    from app import uploads

    data = write_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=4, size=48)
    run = finetune.train(
        data, backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=48, epochs=0, verbose=0,
        out=tmp_path / "models" / "tiny-run",
    )  # fmt: skip
    files = {"first.png": (data / "blue" / "0.png").read_bytes(), "second.jpg": image_bytes("red", "JPEG")}
    expected = {name: uploads.predict_upload(run, name, data).predictions[0]["label"] for name, data in files.items()}

    with serve_app(tmp_path / "models", tmp_path) as url, browser_page() as page:
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            page.get_by_text("Labels (2): blue, red").wait_for()
            uploader = page.locator("input[type=file]")
            uploader.set_input_files(
                [{"name": name, "mimeType": "image/png" if name.endswith(".png") else "image/jpeg", "buffer": data} for name, data in files.items()]
            )
            page.get_by_role("button", name="Download all results (CSV)").wait_for()
            for name, label in expected.items():
                card = page.get_by_test_id("stVerticalBlock").filter(has=page.get_by_text(name, exact=True))
                card.get_by_role("heading", name=label).first.wait_for()
            uploader.set_input_files([{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"a text file, not a photo"}])
            message = page.get_by_test_id("stAlert").filter(has_text="broken.jpg")
            message.wait_for()
            assert "not an image in a supported format" in message.inner_text()
            page.wait_for_timeout(500)  # let the charts draw before the picture
            page.screenshot(path=tmp_path / "app.png", full_page=True)
        except Exception:
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
            print(f"Page at the failure (screenshot: {tmp_path / 'failure.png'}):\n{page.inner_text('body')}")
            raise
    assert (tmp_path / "app.png").stat().st_size > 10_000
