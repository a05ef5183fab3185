"""The README's app screenshot: a real run served by `streamlit run`, real uploads, taken in Chromium.

    python docs/screenshot.py --run RUN_DIR --images a.png b.jpg ... [--explain] --out docs/app-trust.png

Serves the app on a free port of 127.0.0.1 over a temporary folder holding only RUN_DIR, uploads the
images, turns on "Show why (Grad-CAM heat maps)" when asked, waits for every card and writes a
full-page screenshot. Needs /usr/bin/chromium and playwright, as the browser test (the `dev` extra).
"""

from __future__ import annotations

import argparse
import mimetypes
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.app.test_app_browser import browser_page, serve_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a run folder (model.keras, labels.json, ...)")
    parser.add_argument("--images", required=True, nargs="+", type=Path)
    parser.add_argument("--explain", action="store_true", help="turn the Grad-CAM toggle on")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1150)
    parser.add_argument("--out", required=True, type=Path)
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="finetune-screenshot-"))
    try:
        shutil.copytree(arguments.run, work / "models" / arguments.run.name, ignore=shutil.ignore_patterns("backup"))
        files = [{"name": path.name, "mimeType": mimetypes.guess_type(path.name)[0] or "image/png", "buffer": path.read_bytes()}
                 for path in arguments.images]
        with serve_app(work / "models", work) as url, browser_page(width=arguments.width, height=arguments.height) as page:
            page.set_default_timeout(180_000)
            page.goto(url)
            page.get_by_text("Labels (").first.wait_for()
            page.locator("input[type=file]").set_input_files(files)
            page.get_by_role("button", name="Download all results (CSV)").wait_for()
            if arguments.explain:
                page.get_by_text("Show why (Grad-CAM heat maps)").click()
                page.get_by_text("Grad-CAM").nth(len(files)).wait_for()  # the toggle's label, then one caption per card
            page.wait_for_timeout(1500)  # let the charts draw before the picture
            arguments.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=arguments.out, full_page=True)
        print(f"wrote {arguments.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
