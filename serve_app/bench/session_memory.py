"""Session-core memory over a long simulated session: is everything a session keeps bounded? (A program.)

`python -m serve_app.bench.session_memory [--minutes 40] [--max-items 100]` drives one sans-I/O session as
the socket shell would, with no clock in the way: an 80 ms append and one Moshi frame per step, Moshi
speaking in random runs (so utterances become responses and items). Every 4 simulated minutes it prints
the memory traced by tracemalloc (after a full collection) and the number of conversation items. Bounded
means flat once the audio budget (`retained_audio_ms`) and `max_items` are reached.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Sequence

import numpy as np

from serve_app.constants import FRAME_MS, FRAME_SAMPLES
from serve_app.engine.port import EngineFrame
from serve_app.protocol.codecs import encode_base64
from serve_app.protocol.dialect import Dialect
from serve_app.session.session import RealtimeSession
from serve_app.session.settings import SessionSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.session_memory", description=__doc__)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--max-items", type=int, default=100)
    parser.add_argument("--every-min", type=float, default=4.0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    settings = SessionSettings(max_items=args.max_items)
    session = RealtimeSession(
        session_id="s", model_id="m", dialect=Dialect.GA, settings=settings, now_epoch_s=time.time()
    )
    session.connect()
    off = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    session.receive_client_text(json.dumps({"type": "session.update", "session": off}))
    session.events_to_send()
    append = json.dumps(
        {"type": "input_audio_buffer.append", "audio": encode_base64(bytes(2 * FRAME_SAMPLES))}
    )
    steps = int(args.minutes * 60_000 / FRAME_MS)
    every = int(args.every_min * 60_000 / FRAME_MS)
    speaking = False
    tracemalloc.start()
    for step in range(1, steps + 1):
        session.receive_client_text(append)
        session.audio_for_engine()
        if rng.random() < 0.05:
            speaking = not speaking
        pcm = np.full(FRAME_SAMPLES, 0.1 if speaking else 0.0, dtype=np.float32)
        session.receive_engine_frame(
            EngineFrame(pcm=pcm, text="word" if speaking else None, speaking=speaking)
        )
        session.events_to_send()
        if step % every == 0:
            gc.collect()
            traced, _ = tracemalloc.get_traced_memory()
            minute = step * FRAME_MS / 60_000
            print(
                f"minute {minute:5.1f}  traced {traced / 2**20:6.2f} MiB  items {len(session.conversation)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
