"""Is a client that streams audio but never reads ended, with its slot freed, while another session keeps
its audio? (A program, run against any server, e.g. `make serve`.)

`python -m serve_app.bench.slow_reader_check --url ws://127.0.0.1:8000/v1/realtime --model moshi-sft
--other moshi-base` opens:
- a reading session on `--other` that streams paced audio and counts Moshi's audio deltas;
- the slow client on `--model`: it streams paced audio and never reads (its WebSocket library stops
  reading the socket once one message is queued), with the kernel's default buffers;
- holders on `--model` until one is refused, so the model has no free slot;
then it tries a new session on `--model` every 0.5 s: the first one admitted shows when the slow client's
slot was freed. Prints one JSON object; exit status 0 when the slot was freed within `--limit-s` and the
reading session still received audio in its last 3 s, without an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from serve_app.constants import FRAME_S, FRAME_SAMPLES
from serve_app.protocol.codecs import encode_base64, float_to_pcm16, pcm16_to_bytes

RECENT_S = 3.0


def _append(rng: np.random.Generator) -> str:
    pcm = (0.1 * rng.standard_normal(FRAME_SAMPLES)).astype(np.float32)
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": encode_base64(pcm16_to_bytes(float_to_pcm16(pcm)))}
    )


async def _stream(ws: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    begin = time.monotonic()
    k = 0
    with contextlib.suppress(Exception):  # the server may end the session: the check looks elsewhere
        while True:
            await asyncio.sleep(max(0.0, begin + k * FRAME_S - time.monotonic()))
            await ws.send(_append(rng))
            k += 1


async def _open(url: str, model: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    import websockets

    ws = await websockets.connect(f"{url}?model={model}", max_size=None, **kwargs)
    first: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws, first


async def check(url: str, model: str, other: str, limit_s: float) -> dict[str, Any]:
    tasks: list[asyncio.Task[None]] = []
    sockets: list[Any] = []
    deltas: list[float] = []
    reader_errors: list[str] = []
    result: dict[str, Any] = {"model": model, "other": other}
    try:
        reader, first = await _open(url, other)
        sockets.append(reader)
        if first["type"] != "session.created":
            return {**result, "setup_failed": f"reading session refused: {first}"}

        async def read() -> None:
            async for message in reader:
                event = json.loads(message)
                if event["type"] == "response.output_audio.delta":
                    deltas.append(time.monotonic())
                elif event["type"] == "error":
                    reader_errors.append(event["error"]["code"])

        tasks += [asyncio.create_task(read()), asyncio.create_task(_stream(reader, 1))]
        slow, first = await _open(url, model, max_queue=1)
        sockets.append(slow)
        if first["type"] != "session.created":
            return {**result, "setup_failed": f"slow session refused: {first}"}
        started = time.monotonic()
        tasks.append(asyncio.create_task(_stream(slow, 2)))
        holders = 0
        while True:  # take every other slot of the model, so that only the slow client's can free up
            ws, first = await _open(url, model)
            sockets.append(ws)
            if first["type"] != "session.created":
                break
            holders += 1
            tasks.append(asyncio.create_task(_stream(ws, 10 + holders)))
            tasks.append(asyncio.create_task(_drain(ws)))
        result["holders"] = holders
        freed_after: float | None = None
        while time.monotonic() - started < limit_s + 10:
            await asyncio.sleep(0.5)
            ws, first = await _open(url, model)
            sockets.append(ws)
            if first["type"] == "session.created":
                freed_after = time.monotonic() - started
                break
        result["slot_freed_after_s"] = None if freed_after is None else round(freed_after, 1)
        await asyncio.sleep(RECENT_S)
        now = time.monotonic()
        result["reader_deltas"] = len(deltas)
        result["reader_deltas_last_3s"] = sum(1 for t in deltas if t > now - RECENT_S)
        result["reader_errors"] = reader_errors
        result["ok"] = (
            freed_after is not None
            and freed_after <= limit_s
            and result["reader_deltas_last_3s"] > 0
            and not reader_errors
        )
        return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ws in sockets:
            ws.transport.abort()  # the slow one would wait for its close handshake forever


async def _drain(ws: Any) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.slow_reader_check", description=__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument("--model", default="moshi-sft", help="model of the client that never reads")
    parser.add_argument("--other", default="moshi-base", help="model of the session that reads")
    parser.add_argument("--limit-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    result = asyncio.run(check(args.url, args.model, args.other, args.limit_s))
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
