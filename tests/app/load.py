"""Many browser sessions uploading at once to one app server: each its own image, each checked.

Shared by `tests/app/test_app_load.py` (a tiny model, bounded) and `benchmarks/bench_app_load.py`
(a real run). One Chromium, one page per session (its own websocket: its own Streamlit session), driven by
Playwright's asyncio API so that the uploads go out together and each session's latency is its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from tests.app.test_app_browser import CHROMIUM, CHROMIUM_ARGS


@dataclasses.dataclass
class Upload:
    """What one session uploads, and the answer it must see: its label and top probability as the app prints them."""

    name: str
    data: bytes
    label: str
    shown: str  # e.g. "73.1%"


@dataclasses.dataclass
class SessionResult:
    name: str
    seconds: float  # from the upload to its card's answer on the page
    ok: bool
    problem: str = ""


def expected_uploads(run, images: dict[str, bytes]) -> list[Upload]:
    """Each image's answer as `app.uploads` computes it with the run's recorded TTA mode (the app's default)."""
    import finetune.inference
    from app import uploads

    tta = finetune.inference.recorded_tta(run)
    result = []
    for name, data in images.items():
        best = uploads.predict_upload(run, name, data, tta=tta).predictions[0]
        result.append(Upload(name, data, best["label"], f"{best['probability']:.1%}"))
    return result


def _answer_in(card: str, label: str) -> float | None:
    """The percentage the card shows after its label (its answer, "unknown ... closest: LABEL, p" too), or None."""
    import re

    match = re.search(re.escape(label) + r"[^%]*?(\d+\.\d)%", card)
    return None if match is None else float(match.group(1))


async def _session(context, url: str, upload: Upload, others: set[str], timeout_s: float) -> SessionResult:
    page = await context.new_page()  # a page of its own: its own websocket, its own Streamlit session
    try:
        page.set_default_timeout(timeout_s * 1000)
        await page.goto(url)
        await page.locator("input[type=file]").wait_for(state="attached")
        started = time.perf_counter()
        await page.locator("input[type=file]").set_input_files(
            [{"name": upload.name, "mimeType": "image/png", "buffer": upload.data}])
        await page.get_by_role("button", name="Download all results (CSV)").wait_for()
        seconds = time.perf_counter() - started
        text = await page.inner_text("body")
        card = text[text.find(upload.name):]
        problems = []
        if upload.name not in text:
            problems.append("its file name is missing")
        shown = _answer_in(card, upload.label)
        # Within 0.1 point: the server's and this process's forward passes may differ in the last float digits,
        # which can move a rounded 99.95% either way.
        if shown is None or abs(shown - float(upload.shown.rstrip("%"))) > 0.11:
            problems.append(f"expected {upload.label} {upload.shown}, the page says {card[:160]!r}")
        leaked = sorted(name for name in others if name in text)
        if leaked:
            problems.append(f"shows other sessions' files: {leaked}")
        return SessionResult(upload.name, seconds, not problems, "; ".join(problems))
    except Exception as error:  # a session that times out or breaks is a failed session, reported with the rest
        return SessionResult(upload.name, float("nan"), False, f"{type(error).__name__}: {str(error)[:200]}")
    finally:
        await page.close()


async def _all_sessions(url: str, uploads: list[Upload], timeout_s: float) -> list[SessionResult]:
    from playwright.async_api import async_playwright

    names = {upload.name for upload in uploads}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # One context: the app's scripts are fetched and cached once; a small window draws less.
            context = await browser.new_context(viewport={"width": 900, "height": 700})
            return list(await asyncio.gather(*(_session(context, url, upload, names - {upload.name}, timeout_s)
                                               for upload in uploads)))
        finally:
            await browser.close()


def drive_sessions(url: str, uploads: list[Upload], timeout_s: float = 120.0) -> list[SessionResult]:
    """One browser session per upload, all at once; each result says whether it saw its own answer, and how soon."""
    return asyncio.run(_all_sessions(url, uploads, timeout_s))


def peak_memory_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def percentiles(seconds: list[float]) -> dict:
    import numpy as np

    values = np.array([value for value in seconds if value == value])
    return {"p50_s": float(np.percentile(values, 50)), "p95_s": float(np.percentile(values, 95)),
            "max_s": float(values.max())}
