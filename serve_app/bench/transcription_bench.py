"""Transcription-session benchmark: how many live caption streams a server keeps in real time, and how
long after `speech_stopped` each turn's transcript arrives, at 1 stream and at the most. (A program.)

`python -m serve_app.bench.transcription_bench --url ws://127.0.0.1:8000/v1/realtime [--backend kyutai-stt]
[--streams 1 8 32 64] [--wav tests/fixtures/speech/sentences.wav]`

Each step opens N transcription sessions at once (`?model=<backend>&intent=transcription`, no Moshi slot),
each streaming the file at real time (80 ms appends on a microphone's schedule, starts spread over one
frame). A step keeps real time when every session was admitted, every turn ended `.completed` (none
`.failed`) and the slowest turn's `speech_stopped` → `.completed` stayed under `--max-latency-ms`; the
ladder stops at the first step that does not. The server's streaming-ASR replicas come from /v1/status,
so streams per replica = the largest step that kept real time / replicas. Prints JSON and writes
transcription_bench.json to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.bench.engine_bench import git_commit
from serve_app.bench.listening_bench import DEFAULT_WAV, TRANSCRIPTION_DONE, read_wav
from serve_app.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.protocol.codecs import float_to_pcm16, pcm16_to_bytes

COMPLETED = "conversation.item.input_audio_transcription.completed"


@dataclass
class StreamResult:
    refused: str | None = None
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    first_delta_lead_ms: list[float] = field(default_factory=list)
    """How long before speech_stopped each turn's first `.delta` came (a streaming backend)."""


async def one_stream(url: str, pcm16: bytes, offset_s: float, tail_s: float) -> StreamResult:
    import websockets

    result = StreamResult()
    stopped: dict[str, float] = {}
    first_delta: dict[str, float] = {}
    await asyncio.sleep(offset_s)
    async with websockets.connect(url, max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created["type"] == "error":
            result.refused = created["error"]["code"]
            return result

        async def send() -> None:
            step, began = 2 * FRAME_SAMPLES, time.monotonic()
            for k, start in enumerate(range(0, len(pcm16), step)):
                await asyncio.sleep(max(0.0, began + k * FRAME_S - time.monotonic()))
                chunk = base64.b64encode(pcm16[start : start + step]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))

        sender = asyncio.create_task(send())
        deadline = time.monotonic() + len(pcm16) / 2 / SAMPLE_RATE + tail_s
        while not (sender.done() and stopped and result.failed + len(result.latencies_ms) >= len(stopped)):
            if time.monotonic() > deadline:
                break
            try:
                event = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except TimeoutError:
                continue
            kind, item_id = event["type"], event.get("item_id", "")
            if kind == "input_audio_buffer.speech_stopped":
                stopped[item_id] = time.monotonic()
                if item_id in first_delta:
                    result.first_delta_lead_ms.append(1000 * (stopped[item_id] - first_delta[item_id]))
            elif kind == "conversation.item.input_audio_transcription.delta":
                first_delta.setdefault(item_id, time.monotonic())
            elif kind in TRANSCRIPTION_DONE and item_id in stopped:
                if kind == COMPLETED:
                    result.latencies_ms.append(1000 * (time.monotonic() - stopped[item_id]))
                else:
                    result.failed += 1
        result.failed += len(stopped) - result.failed - len(result.latencies_ms)  # never ended: failed
        sender.cancel()
    return result


def summarise(streams: int, results: list[StreamResult], max_latency_ms: float) -> dict[str, Any]:
    latencies = [x for r in results for x in r.latencies_ms]
    refused = [r.refused for r in results if r.refused is not None]
    failed = sum(r.failed for r in results)
    worst = max(latencies, default=float("inf"))
    return {
        "streams": streams,
        "refused": refused,
        "turns_completed": len(latencies),
        "turns_failed": failed,
        "speech_stopped_to_completed_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "p90": round(float(np.percentile(latencies, 90)), 1) if latencies else None,
            "max": round(worst, 1) if latencies else None,
        },
        "first_delta_before_speech_stopped_ms_p50": (
            round(float(np.median([x for r in results for x in r.first_delta_lead_ms])), 1)
            if any(r.first_delta_lead_ms for r in results)
            else None
        ),
        "kept_real_time": not refused and failed == 0 and bool(latencies) and worst <= max_latency_ms,
    }


async def step(url: str, pcm16: bytes, streams: int, max_latency_ms: float) -> dict[str, Any]:
    offsets = [FRAME_S * k / streams for k in range(streams)]
    results = await asyncio.gather(*(one_stream(url, pcm16, o, tail_s=30.0) for o in offsets))
    return summarise(streams, list(results), max_latency_ms)


def asr_replicas(url: str, backend: str) -> int | None:
    import httpx

    http = (
        url.replace("ws://", "http://").replace("wss://", "https://").split("/v1/")[0].split("/realtime")[0]
    )
    try:
        body = httpx.get(f"{http}/v1/status", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    replicas = body.get("transcription", {}).get("streaming_asr", {}).get(backend)
    return None if replicas is None else len(replicas)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.bench.transcription_bench", description=__doc__
    )
    parser.add_argument("--url", required=True, help="a running server's /v1/realtime URL")
    parser.add_argument("--backend", default="kyutai-stt", help="the ASR backend id the URL's model names")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--wav", type=Path, default=DEFAULT_WAV)
    parser.add_argument("--max-latency-ms", type=float, default=1000.0)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    pcm16 = pcm16_to_bytes(float_to_pcm16(read_wav(args.wav)))
    url = f"{args.url}?model={args.backend}&intent=transcription"
    ladder: list[dict[str, Any]] = []
    for streams in sorted(args.streams):
        ladder.append(asyncio.run(step(url, pcm16, streams, args.max_latency_ms)))
        print(json.dumps(ladder[-1]), flush=True)
        if not ladder[-1]["kept_real_time"]:
            break
    kept = [s["streams"] for s in ladder if s["kept_real_time"]]
    replicas = asr_replicas(args.url, args.backend)
    result = {
        "command": shlex.join(["python", "-m", "serve_app.bench.transcription_bench", *arguments]),
        "commit": git_commit(),
        "backend": args.backend,
        "audio_s": round(len(pcm16) / 2 / SAMPLE_RATE, 2),
        "asr_replicas": replicas,
        "max_streams_in_real_time": max(kept, default=0),
        "streams_per_replica": (max(kept, default=0) / replicas) if replicas else None,
        "ladder": ladder,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transcription_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
