"""Listening benchmark: server VAD and ASR cost per stream-second, and transcription latency. (A program.)

`python -m serve_app.bench.listening_bench [--wav tests/fixtures/speech/sentences.wav] [--url ws://...]`

- VAD: N streams (`--streams`, default 1 and 16) through `VadStream` in 80 ms chunks on one thread, judged
  in one batched inference per chunk as the ingress's vad thread does: CPU per second of audio per stream,
  and the share of a core N streams take.
- ASR: each turn the VAD found, transcribed by every configured backend kind that runs offline
  (pocketsphinx): CPU per second of audio and wall time per turn, which is the latency the backend adds
  after the speech stopped (the VAD itself decides `silence_duration_ms` after the speech ends).
- `--url`: the same file through a running server (e.g. `make serve`) with transcription on, once per
  `--transcription-models` (default: whisper-1, which names the default backend, and kyutai-stt, the
  streaming one in configs/local.yaml): per turn, the time from `speech_stopped` to
  `...input_audio_transcription.completed` at the client, and for a streaming backend how long before
  `speech_stopped` the turn's first `.delta` arrived.
Prints JSON and writes listening_bench.json to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shlex
import sys
import time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serve_app.bench.engine_bench import git_commit
from serve_app.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.listening.segmenter import SpeechStarted, SpeechStopped, VadParams
from serve_app.listening.silero import SileroVad
from serve_app.listening.vad_stream import VadStream
from serve_app.protocol.codecs import float_to_pcm16, pcm16_from_bytes, pcm16_to_bytes, pcm16_to_float

DEFAULT_WAV = Path("tests/fixtures/speech/sentences.wav")
TRANSCRIPTION_DONE = (
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
)


def read_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path)) as f:
        if (f.getframerate(), f.getnchannels(), f.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise SystemExit(f"{path}: need 24 kHz mono PCM16")
        return pcm16_to_float(pcm16_from_bytes(f.readframes(f.getnframes())))


def vad_cost(pcm: npt.NDArray[np.float32], streams: int) -> dict[str, Any]:
    model = SileroVad()
    vads = [VadStream(model, VadParams()) for _ in range(streams)]
    started = time.process_time()
    events: list[SpeechStarted | SpeechStopped] = []
    for start in range(0, len(pcm), FRAME_SAMPLES):
        chunk = pcm[start : start + FRAME_SAMPLES]
        for vad in vads:  # as the ingress's vad thread does it: feed everyone, judge in one batch
            vad.feed(chunk)
        found = model.run([vad.silero for vad in vads])
        for k, vad in enumerate(vads):
            judged = vad.judge(found[vad.silero])
            if k == 0:
                events += judged
    cpu = time.process_time() - started
    audio_s = len(pcm) / SAMPLE_RATE
    return {
        "streams": streams,
        "cpu_ms_per_stream_second": round(1000 * cpu / audio_s / streams, 3),
        "core_share_at_real_time": round(cpu / audio_s, 4),
        "turns": sum(isinstance(e, SpeechStopped) for e in events),
    }


def turns(pcm: npt.NDArray[np.float32], params: VadParams) -> list[npt.NDArray[np.float32]]:
    """The turns server VAD commits: from audio_start_ms to audio_end_ms."""
    vad = VadStream(SileroVad(), params)
    spans: list[npt.NDArray[np.float32]] = []
    start_ms = 0
    for start in range(0, len(pcm), FRAME_SAMPLES):
        for event in vad.push(pcm[start : start + FRAME_SAMPLES]):
            if isinstance(event, SpeechStarted):
                start_ms = event.audio_start_ms
            else:
                spans.append(pcm[start_ms * 24 : event.audio_end_ms * 24])
    return spans


def asr_cost(spans: list[npt.NDArray[np.float32]]) -> dict[str, Any]:
    from serve_app.asr.pocketsphinx_backend import PocketsphinxTranscriber

    asr = PocketsphinxTranscriber()
    asr.transcribe(spans[0])  # first-call costs out of the measurement
    rows: list[dict[str, Any]] = []
    for span in spans:
        cpu, wall = time.process_time(), time.perf_counter()
        text = asr.transcribe(span)
        rows.append(
            {
                "audio_s": round(len(span) / SAMPLE_RATE, 2),
                "wall_ms": round(1000 * (time.perf_counter() - wall), 1),
                "cpu_s": time.process_time() - cpu,
                "text": text,
            }
        )
    audio = sum(float(r["audio_s"]) for r in rows)
    return {
        "backend": "pocketsphinx",
        "cpu_s_per_audio_s": round(sum(float(r["cpu_s"]) for r in rows) / audio, 3),
        "latency_ms_per_turn": [r["wall_ms"] for r in rows],
        "texts": [r["text"] for r in rows],
    }


async def through_server(
    url: str, pcm: npt.NDArray[np.float32], model: str, transcription: str
) -> dict[str, Any]:
    import websockets

    pcm16 = pcm16_to_bytes(float_to_pcm16(pcm))
    stopped: dict[str, float] = {}
    first_delta: dict[str, float] = {}
    latency: list[float] = []
    lead: list[float] = []
    texts: list[str] = []
    async with websockets.connect(f"{url}?model={model}", max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created["type"] == "error":
            raise SystemExit(f"refused: {created['error']['code']}")
        update = {"type": "realtime", "audio": {"input": {"transcription": {"model": transcription}}}}
        await ws.send(json.dumps({"type": "session.update", "session": update}))

        async def send() -> None:  # paced at real time, as a microphone would
            step = 2 * FRAME_SAMPLES
            begin = time.monotonic()
            for k, start in enumerate(range(0, len(pcm16), step)):
                await asyncio.sleep(max(0.0, begin + k * FRAME_S - time.monotonic()))
                chunk = base64.b64encode(pcm16[start : start + step]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))

        sender = asyncio.create_task(send())
        deadline = time.monotonic() + len(pcm) / SAMPLE_RATE + 60
        while not (sender.done() and stopped and len(latency) >= len(stopped)):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(latency)} of {len(stopped)} turns were transcribed")
            try:
                event = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
            except TimeoutError:
                continue
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped":
                stopped[event["item_id"]] = time.monotonic()
                if event["item_id"] in first_delta:
                    lead.append(1000 * (stopped[event["item_id"]] - first_delta[event["item_id"]]))
            elif kind == "conversation.item.input_audio_transcription.delta":
                first_delta.setdefault(event["item_id"], time.monotonic())
            elif kind in TRANSCRIPTION_DONE:
                latency.append(1000 * (time.monotonic() - stopped[event["item_id"]]))
                texts.append(event.get("transcript") or event.get("error", {}).get("message", ""))
        await sender
    return {
        "transcription_model": transcription,
        "turns": len(latency),
        "speech_stopped_to_transcript_ms": [round(x, 1) for x in latency],
        "first_delta_before_speech_stopped_ms": [round(x, 1) for x in lead],
        "texts": texts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.listening_bench", description=__doc__)
    parser.add_argument("--wav", type=Path, default=DEFAULT_WAV)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--url", help="a running server's /v1/realtime URL (optional)")
    parser.add_argument("--model", default="moshi-sft")
    parser.add_argument("--transcription-models", nargs="+", default=["whisper-1", "kyutai-stt"])
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    import torch

    from serve_app.bench.engine_bench import machine_info

    pcm = read_wav(args.wav)
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "serve_app.bench.listening_bench", *arguments]),
        "commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "audio_s": round(len(pcm) / SAMPLE_RATE, 2),
        "vad": [vad_cost(pcm, n) for n in args.streams],
        "asr": asr_cost(turns(pcm, VadParams())),
    }
    if args.url:
        result["service"] = [
            asyncio.run(through_server(args.url, pcm, args.model, name)) for name in args.transcription_models
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "listening_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
