"""The browser demo in real headless Chromium: fake microphone (the festival fixture) → server → speakers,
over WebRTC (the default: `v1/realtime/client_secrets`, then `v1/realtime/calls`) and over the WebSocket.

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
    from playwright.async_api import Page, Request

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or Path(__file__).parents[1] / "artifacts")
WAIT_S = 40

# Everything the page must show before the test stops it: audio up, audio down and played, Moshi's words,
# and the user's turn transcribed (server VAD committed it, pocketsphinx heard it).
DONE_WEBSOCKET = """() => {
  const s = window.demoStats;
  return s.errors.length > 0 || (s.samplesSent > 0 && s.audioDeltas > 0 && s.samplesPlayed > 0
    && s.transcriptChars > 0 && s.userTranscriptChars > 0);
}"""
# Over WebRTC the counters are the peer connection's own (getStats): RTP packets of the microphone sent,
# Moshi's samples decoded for playout by the <audio> element, and their energy (0 for silence).
DONE_WEBRTC = """() => {
  const s = window.demoStats;
  return s.errors.length > 0 || (s.packetsSent > 0 && s.samplesReceived > 0 && s.audioEnergy > 0
    && s.transcriptChars > 0 && s.userTranscriptChars > 0);
}"""
# Moshi's random-weight noise, as the receiver measured it: the RMS of WebRTC's audio level (0…1) over the
# seconds played. Digital silence is 0; the encoder's and decoder's noise floor is far below this.
MIN_MOSHI_LEVEL = 0.01


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
        "web/ui.js": "text/javascript",
        "web/events.js": "text/javascript",
        "web/webrtc-call.js": "text/javascript",
        "web/websocket-call.js": "text/javascript",
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


async def talk_until(page: Page, done: str, screenshot: str) -> dict[str, Any]:
    """Press Talk and wait until `done` holds (or the wait runs out: the caller's assertions then say what
    is missing); the counters then, and a screenshot."""
    from playwright.async_api import Error as PlaywrightError

    await page.click("#talk")
    with contextlib.suppress(PlaywrightError):
        await page.wait_for_function(done, timeout=WAIT_S * 1000, polling=200)
    stats = await stats_of(page)
    await page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    return stats


async def lines_left_after_stop(page: Page) -> tuple[int, int]:
    """A turn cut by Stop leaves no "You: …" waiting for a transcript that cannot come: (pending, empty)."""
    left_pending = await page.locator("#log p.pending").count()
    empty_lines = await page.evaluate(
        "() => [...document.querySelectorAll('#log .text')].filter((t) => !t.textContent).length"
    )
    return left_pending, empty_lines


def save(name: str, stats: dict[str, Any], console: list[str], **more: Any) -> None:
    (ARTIFACTS / name).write_text(json.dumps({"stats": stats, "console": console, **more}, indent=2))


async def test_the_demo_talks_to_moshi_over_a_websocket(demo_server: RunningServer, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    async with demo_page(demo_server, tmp_path, console) as page:
        # The server says its model is a random-weight checkpoint (v1/models): the page says so in words.
        notice = await page.inner_text("#notice") if await page.is_visible("#notice") else ""
        counters_open = await page.evaluate("() => document.querySelector('details').open")
        headphones_by_default = await page.is_visible("#headphones")
        await page.select_option("#transport", "websocket")
        headphones = await page.is_visible("#headphones")  # the one mode that plays outside the AEC
        await page.fill("#api-key", API_KEY)  # sent as the `openai-insecure-api-key.` subprotocol
        stats = await talk_until(page, DONE_WEBSOCKET, "browser-demo.png")
        await page.click("#talk")  # Stop
        stopped = await stats_of(page)
        left_pending, empty_lines = await lines_left_after_stop(page)
    save("browser-demo.json", stats, console)
    detail = f"stats: {stats}; console: {console}"
    assert stats["transport"] == "websocket", detail
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
    assert (headphones_by_default, headphones) == (False, True), (
        "the headphones notice belongs to WebSocket mode"
    )
    assert not [line for line in console if line.startswith(("error", "pageerror"))], console


async def test_the_demo_talks_to_moshi_over_webrtc_by_default(
    demo_server: RunningServer, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    async with demo_page(demo_server, tmp_path, console) as page:
        requests: list[Request] = []
        page.on("request", lambda r: requests.append(r))
        transport = await page.input_value("#transport")
        await page.fill("#api-key", API_KEY)  # mints the call's `ek_` key; the call itself never carries it
        stats = await talk_until(page, DONE_WEBRTC, "browser-demo-webrtc.png")
        # Moshi's track plays in the page's <audio> element (what Chrome's echo canceller references).
        playing = await page.evaluate(
            "() => { const a = document.getElementById('moshi-audio'); "
            "return a.srcObject !== null && !a.paused && a.srcObject.getAudioTracks().length > 0; }"
        )
        async with page.expect_response(lambda r: r.url.endswith("/hangup")) as hangup_info:
            await page.click("#talk")  # Stop
        hangup = await hangup_info.value
        stopped = await stats_of(page)
        left_pending, empty_lines = await lines_left_after_stop(page)
        posts = {
            r.url.split("?")[0].removeprefix(demo_server.http_base): await r.all_headers()
            for r in requests
            if r.method == "POST"
        }
    save("browser-demo-webrtc.json", stats, console, posts=sorted(posts))
    detail = f"stats: {stats}; console: {console}"
    assert transport == "webrtc" and stats["transport"] == "webrtc", detail
    assert not stats["errors"], detail
    assert stats["packetsSent"] > 0, f"no microphone audio went up on the track; {detail}"
    assert stats["samplesReceived"] > 0, f"no audio from Moshi was decoded for playout; {detail}"
    level = (stats["audioEnergy"] / stats["audioSeconds"]) ** 0.5 if stats["audioSeconds"] else 0.0
    assert level > MIN_MOSHI_LEVEL, f"Moshi's audio played as silence (level {level}); {detail}"
    assert stats["audioBufferStarts"] > 0, f"no output_audio_buffer.started; {detail}"
    assert playing, f"the <audio> element was not playing Moshi's track; {detail}"
    assert stats["transcriptChars"] > 0, f"no text from Moshi was shown; {detail}"
    assert stats["userTranscriptChars"] > 0, f"the user's turn was not transcribed; {detail}"
    assert stats["echoCancellation"] is not None, detail
    # The real key only mints; the call and its hangup carry the `ek_` key.
    call = [path for path in posts if path.startswith("/v1/realtime/calls/") and path.endswith("/hangup")]
    assert len(call) == 1, sorted(posts)
    assert set(posts) == {"/v1/realtime/client_secrets", "/v1/realtime/calls", *call}, sorted(posts)
    assert posts["/v1/realtime/client_secrets"]["authorization"] == f"Bearer {API_KEY}"
    for path in ("/v1/realtime/calls", *call):
        assert posts[path]["authorization"].startswith("Bearer ek_"), (path, posts[path])
    assert posts["/v1/realtime/calls"]["content-type"] == "application/sdp"
    assert hangup.status in (200, 204) and hangup.request.url.split("/")[-2].startswith("rtc_"), hangup.url
    assert stopped["state"] == "idle" and not stopped["errors"], f"stopping went wrong: {stopped}"
    assert (left_pending, empty_lines) == (0, 0), "lines left waiting after Stop"
    assert not [line for line in console if line.startswith(("error", "pageerror"))], console


async def test_a_wrong_api_key_is_shown_in_words_over_a_websocket(
    demo_server: RunningServer, tmp_path: Path
) -> None:
    console: list[str] = []
    async with demo_page(demo_server, tmp_path, console) as page:
        await page.select_option("#transport", "websocket")
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


async def test_a_wrong_api_key_is_shown_in_words_over_webrtc(
    demo_server: RunningServer, tmp_path: Path
) -> None:
    console: list[str] = []
    async with demo_page(demo_server, tmp_path, console) as page:
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if "/v1/realtime/calls" in r.url else None)
        await page.fill("#api-key", "not-the-key")
        await page.click("#talk")
        # Minting the `ek_` key is refused: no call is offered.
        await page.wait_for_function(
            "window.demoStats.errors.length >= 1 && window.demoStats.state === 'idle'"
        )
        shown = await page.inner_text("#errors")
        stats = await stats_of(page)
    assert "POST v1/realtime/client_secrets answered 401" in shown and "invalid_api_key" in shown, shown
    assert stats["errors"] == shown.splitlines() and stats["packetsSent"] == 0, stats
    assert calls == [], calls
