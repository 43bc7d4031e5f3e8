"""The browser demo in real headless Chromium: fake microphone (the festival fixture) → server → speakers.

Chromium is Debian's (`apt-get install chromium`), driven by Playwright through `executable_path`: nothing is
downloaded. Its fake capture device plays the WAV through the same getUserMedia / echo cancellation / worklet
path as a real microphone; its audio output runs on a fake device, so the playback worklet's clock is real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from scipy.signal import resample_poly

from tests.browser.conftest import API_KEY
from tests.fixtures.speech import sentences_pcm16
from tests.server.conftest import RunningServer

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or Path(__file__).parents[1] / "artifacts")
WAIT_S = 40

# Everything the page must show before the test stops it: audio up, audio down and played, Moshi's words,
# and the user's turn transcribed (server VAD committed it, pocketsphinx heard it).
DONE = """() => {
  const s = window.demoStats;
  return s.errors.length > 0 || (s.samplesSent > 0 && s.audioDeltas > 0 && s.samplesPlayed > 0
    && s.transcriptChars > 0 && s.userTranscriptChars > 0);
}"""


def chromium_or_fail() -> str:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium") or shutil.which("chromium-browser")
        pytest.fail(
            f"Chromium not found at {CHROMIUM} ({'but at ' + found if found else 'nor on PATH'}): the "
            "browser test needs it; install it with `apt-get install chromium` (or set CHROMIUM=/path/to/it)"
        )
    return CHROMIUM


def fake_microphone(tmp_path: Path) -> Path:
    """The fixture at 48 kHz (a microphone's usual rate; the page must resample it to 24 kHz itself)."""
    pcm = np.frombuffer(sentences_pcm16(), dtype="<i2").astype(np.float64)
    up = np.clip(resample_poly(pcm, 2, 1), -32768, 32767).astype("<i2")
    path = tmp_path / "microphone-48k.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(48_000)
        f.writeframes(up.tobytes())
    return path


def note_failure(console: list[str], url: str, status: int) -> None:
    if status >= 400:
        console.append(f"error: {url} answered {status}")


def test_static_files_are_served_with_their_content_types(demo_server: RunningServer) -> None:
    expected = {
        "": "text/html",
        "web/app.js": "text/javascript",
        "web/capture-worklet.js": "text/javascript",
        "web/playback-worklet.js": "text/javascript",
        "web/resampler.js": "text/javascript",
        "web/style.css": "text/css",
    }
    for path, media_type in expected.items():
        with urllib.request.urlopen(f"{demo_server.http_base}/{path}", timeout=10) as response:
            assert response.status == 200
            assert response.headers["content-type"].split(";")[0] == media_type, path
            assert response.read()


@contextlib.asynccontextmanager
async def demo_page(server: RunningServer, tmp_path: Path, console: list[str]) -> AsyncIterator[Page]:
    """The demo in headless Chromium with the fixture as its microphone; the console and failed loads
    are collected into `console`."""
    executable = chromium_or_fail()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -r requirements-dev.txt (never `playwright install`)")
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_microphone(tmp_path)}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            context = await browser.new_context(viewport={"width": 900, "height": 900})
            await context.grant_permissions(["microphone"], origin=server.http_base)
            page = await context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: console.append(f"error: {r.url} failed: {r.failure}"))
            page.on("response", lambda r: note_failure(console, r.url, r.status))
            await page.goto(f"{server.http_base}/")
            await page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            yield page
        finally:
            await browser.close()


async def stats_of(page: Page) -> dict[str, Any]:
    stats: dict[str, Any] = await page.evaluate("() => structuredClone(window.demoStats)")
    return stats


async def test_the_demo_talks_to_moshi_in_headless_chromium(
    demo_server: RunningServer, tmp_path: Path
) -> None:
    from playwright.async_api import Error as PlaywrightError

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    async with demo_page(demo_server, tmp_path, console) as page:
        # The server says its model is a random-weight checkpoint (v1/models): the page says so in words.
        notice = await page.inner_text("#notice") if await page.is_visible("#notice") else ""
        counters_open = await page.evaluate("() => document.querySelector('details').open")
        await page.fill("#api-key", API_KEY)  # sent as the `openai-insecure-api-key.` subprotocol
        await page.click("#talk")
        with contextlib.suppress(PlaywrightError):  # on timeout the assertions below say what is missing
            await page.wait_for_function(DONE, timeout=WAIT_S * 1000, polling=200)
        stats = await stats_of(page)
        await page.screenshot(path=str(ARTIFACTS / "browser-demo.png"), full_page=True)
        await page.click("#talk")  # Stop
        stopped = await stats_of(page)
        # A turn cut by Stop leaves no "You: …" waiting for a transcript that cannot come.
        left_pending = await page.locator("#log p.pending").count()
        empty_lines = await page.evaluate(
            "() => [...document.querySelectorAll('#log .text')].filter((t) => !t.textContent).length"
        )
    (ARTIFACTS / "browser-demo.json").write_text(json.dumps({"stats": stats, "console": console}, indent=2))
    detail = f"stats: {stats}; console: {console}"
    assert not stats["errors"], detail
    assert stats["samplesSent"] > 0, f"no microphone audio went up; {detail}"
    assert stats["audioDeltas"] > 0, f"no audio from Moshi arrived; {detail}"
    assert stats["samplesPlayed"] > 0, f"Moshi's audio arrived but was never played; {detail}"
    assert stats["transcriptChars"] > 0, f"no text from Moshi was shown; {detail}"
    assert stats["userTranscriptChars"] > 0, f"the user's turn was not transcribed; {detail}"
    assert stats["contextRate"] and stats["echoCancellation"] is not None, detail
    assert stopped["state"] == "idle" and not stopped["errors"], f"stopping went wrong: {stopped}"
    assert (left_pending, empty_lines) == (0, 0), "lines left waiting after Stop"
    assert stats["randomWeights"] == ["moshi-sft"], stats
    assert "moshi-sft" in notice and "random weights" in notice and "expected" in notice, notice
    assert counters_open is False, "the debug counters are open by default"
    assert not [line for line in console if line.startswith(("error", "pageerror"))], console


async def test_a_wrong_api_key_is_shown_in_words(demo_server: RunningServer, tmp_path: Path) -> None:
    console: list[str] = []
    async with demo_page(demo_server, tmp_path, console) as page:
        await page.fill("#api-key", "not-the-key")
        await page.click("#talk")
        # The server's `error` event, then its close frame.
        await page.wait_for_function(
            "window.demoStats.errors.length >= 2 && window.demoStats.state === 'idle'"
        )
        shown = await page.inner_text("#errors")
        stats = await stats_of(page)
    assert "invalid_api_key" in shown and "code 1008, policy violation" in shown, shown
    assert stats["samplesSent"] == 0 and stats["errors"] == shown.splitlines(), stats
