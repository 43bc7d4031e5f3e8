"""Does a running server either serve each session in real time or refuse it at once? (A program.)

Two checks against any `/v1/realtime` endpoint (e.g. `make serve`):

- `raw`: N paced sessions per model from this one process (raw WebSockets, 80 ms PCM16 appends for
  `--seconds`). Per session: admitted or refused (and how fast), audio deltas received, and how many
  arrived after its input stopped (a real-time session has at most the frames in flight: a few).
- `sdk`: P official-`openai`-SDK conversations, each its own process, spread over the models: each must
  complete a response or be refused at once; none may hang. The processes import first and connect
  together `--warmup-s` later (the server is measured, not six Python start-ups on the same cores).

`python -m serve_app.bench.paced_check raw --url ws://127.0.0.1:8000/v1/realtime --models moshi-sft moshi-base
moshi-pretrain --per-model 4` prints one JSON line per session and a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from serve_app.constants import FRAME_S, FRAME_SAMPLES
from serve_app.protocol.codecs import encode_base64, float_to_pcm16, pcm16_to_bytes

TAIL_S = 3.0
"""How long a session listens after its input stopped."""
MAX_TAIL_FRAMES = 6
"""A session served in real time receives at most this many audio frames after its input stops."""
REFUSED_AT_ONCE_S = 3.0


@dataclass
class Outcome:
    model: str
    index: int
    admitted: bool = False
    refusal: str = ""
    answered_s: float = 0.0
    """Connect → first event (session.created or the refusal)."""
    sent: int = 0
    deltas: int = 0
    tail_frames: int = 0
    """Audio frames (80 ms of audio each) received after the last append was sent."""
    errors: list[str] = field(default_factory=list)

    @property
    def real_time(self) -> bool:
        return self.admitted and self.deltas > 0 and self.tail_frames <= MAX_TAIL_FRAMES and not self.errors


def _frames_in(delta_b64: str) -> float:
    return len(delta_b64) * 3 / 4 / 2 / FRAME_SAMPLES


async def raw_session(url: str, model: str, index: int, seconds: float) -> Outcome:
    import websockets

    outcome = Outcome(model, index)
    rng = np.random.default_rng(index)
    started = time.monotonic()
    async with websockets.connect(f"{url}?model={model}", max_size=None) as ws:
        first = json.loads(await ws.recv())
        outcome.answered_s = round(time.monotonic() - started, 3)
        if first["type"] == "error":
            outcome.refusal = first["error"]["code"]
            return outcome
        outcome.admitted = True
        stopped_at: list[float] = []
        tail = 0.0

        async def read() -> None:
            nonlocal tail
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "response.output_audio.delta":
                    outcome.deltas += 1
                    if stopped_at:
                        tail += _frames_in(event["delta"])
                elif event["type"] == "error":
                    outcome.errors.append(event["error"]["code"])

        reader = asyncio.create_task(read())
        begin = time.monotonic()
        for k in range(int(seconds / FRAME_S)):
            delay = begin + k * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if reader.done():
                break
            pcm = (0.1 * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)
            audio = encode_base64(pcm16_to_bytes(float_to_pcm16(pcm)))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            outcome.sent += 1
        stopped_at.append(time.monotonic())
        await asyncio.sleep(TAIL_S)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        outcome.tail_frames = round(tail)
    return outcome


async def run_raw(url: str, models: Sequence[str], per_model: int, seconds: float) -> list[Outcome]:
    tasks = [
        raw_session(url, model, i * len(models) + m, seconds)
        for i in range(per_model)
        for m, model in enumerate(models)
    ]
    return list(await asyncio.gather(*tasks))


async def sdk_conversation(
    base_url: str, model: str, seconds: float, start_at: float | None = None
) -> dict[str, Any]:
    """One official-SDK conversation: stream paced audio until a response completes (or `seconds` pass).

    `start_at` (epoch seconds): connect then, after the imports, so that processes started together meet
    the server together instead of while the others still import (seconds of CPU each on a small machine).
    """
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="unused", websocket_base_url=base_url)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    started = time.monotonic()
    result: dict[str, Any] = {"model": model, "outcome": "hung"}
    async with client.realtime.connect(model=model) as conn:
        first = await asyncio.wait_for(conn.recv(), 15)
        result["answered_s"] = round(time.monotonic() - started, 3)
        if first.type == "error":
            result["outcome"] = "refused"
            result["code"] = first.error.code
            return result
        rng = np.random.default_rng(0)

        async def speak() -> None:
            begin = time.monotonic()
            for k in range(int(seconds / FRAME_S)):
                await asyncio.sleep(max(0.0, begin + k * FRAME_S - time.monotonic()))
                pcm = (0.1 * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)
                await conn.input_audio_buffer.append(audio=encode_base64(pcm16_to_bytes(float_to_pcm16(pcm))))

        speaker = asyncio.create_task(speak())
        try:
            deadline = time.monotonic() + seconds + 5
            while time.monotonic() < deadline:
                event = await asyncio.wait_for(conn.recv(), max(0.1, deadline - time.monotonic()))
                if event.type == "error":
                    result["outcome"] = "error"
                    result["code"] = event.error.code
                    return result
                if event.type == "response.done" and event.response.status == "completed":
                    result["outcome"] = "completed"
                    result["seconds"] = round(time.monotonic() - started, 2)
                    return result
        except TimeoutError:
            pass
        finally:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
    return result


def run_sdk(
    base_url: str, models: Sequence[str], processes: int, seconds: float, warmup_s: float
) -> list[dict[str, Any]]:
    start_at = time.time() + warmup_s
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve_app.bench.paced_check",
                "one-sdk",
                "--base-url",
                base_url,
                "--model",
                models[i % len(models)],
                "--seconds",
                str(seconds),
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=warmup_s + seconds + 60)
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            proc.kill()
            results.append({"outcome": "hung"})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.paced_check", description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    raw = sub.add_parser("raw", help="N paced raw sessions per model from one process")
    raw.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    raw.add_argument("--per-model", type=int, default=4)
    sdk = sub.add_parser("sdk", help="P official-SDK conversations, one process each")
    sdk.add_argument("--base-url", default="ws://127.0.0.1:8000/v1")
    sdk.add_argument("--processes", type=int, default=6)
    sdk.add_argument(
        "--warmup-s", type=float, default=10.0, help="time for the processes to import before they connect"
    )
    one = sub.add_parser("one-sdk", help="(internal) one SDK conversation, prints its JSON outcome")
    one.add_argument("--base-url", default="ws://127.0.0.1:8000/v1")
    one.add_argument("--model", default="moshi-sft")
    one.add_argument("--start-at", type=float, default=None, help="epoch seconds to connect at")
    for p in (raw, sdk):
        p.add_argument("--models", nargs="+", default=["moshi-sft", "moshi-base", "moshi-pretrain"])
    for p in (raw, sdk, one):
        p.add_argument("--seconds", type=float, default=10.0, help="input audio per session")
    args = parser.parse_args(argv)

    if args.mode == "one-sdk":
        outcome = asyncio.run(sdk_conversation(args.base_url, args.model, args.seconds, args.start_at))
        print(json.dumps(outcome))
        return 0
    if args.mode == "sdk":
        results = run_sdk(args.base_url, args.models, args.processes, args.seconds, args.warmup_s)
        for r in results:
            print(json.dumps(r))
        ok = all(
            r["outcome"] == "completed"
            or (r["outcome"] == "refused" and r.get("answered_s", 99) < REFUSED_AT_ONCE_S)
            for r in results
        )
        counts = {
            k: sum(r["outcome"] == k for r in results) for k in ("completed", "refused", "error", "hung")
        }
        print(json.dumps({"summary": counts, "every_session_completed_or_refused_at_once": ok}))
        return 0 if ok else 1
    outcomes = asyncio.run(run_raw(args.url, args.models, args.per_model, args.seconds))
    for o in outcomes:
        print(json.dumps({**asdict(o), "real_time": o.real_time}))
    served = sum(o.real_time for o in outcomes)
    refused_fast = sum(not o.admitted and o.answered_s < REFUSED_AT_ONCE_S for o in outcomes)
    ok = served + refused_fast == len(outcomes)
    print(
        json.dumps(
            {
                "summary": {
                    "sessions": len(outcomes),
                    "served_in_real_time": served,
                    "refused_at_once": refused_fast,
                },
                "max_tail_frames": max((o.tail_frames for o in outcomes if o.admitted), default=0),
                "every_session_served_or_refused_at_once": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
