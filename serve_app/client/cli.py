"""`python -m serve_app.client --input speech.wav --output moshi.wav`: stream a WAV in real time, save Moshi.

It uses the official `openai` SDK, so it is also the shortest example of a client. Moshi's audio is written
on the input's timeline (silence where Moshi did not speak): the output is exactly as long as the input plus
the `--tail-s` of silence sent after it for Moshi to finish, so the two files line up sample for sample.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from openai import AsyncOpenAI

from serve_app.constants import BYTES_PER_SAMPLE_PCM16, FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.protocol.codecs import decode_base64, encode_base64

_AUDIO_DELTA = {"response.output_audio.delta", "response.audio.delta"}
_TRANSCRIPT_DELTA = {"response.output_audio_transcript.delta", "response.audio_transcript.delta"}


class WavFormatError(ValueError):
    pass


def read_pcm16(path: Path) -> bytes:
    """PCM16 mono 24 kHz frames of a WAV file; anything else is refused with what was found."""
    with wave.open(str(path), "rb") as wav:
        found = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if found != (SAMPLE_RATE, 1, BYTES_PER_SAMPLE_PCM16):
            raise WavFormatError(
                f"{path}: need 24000 Hz mono 16-bit PCM, got {found[0]} Hz, {found[1]} channel(s), "
                f"{8 * found[2]}-bit (convert with: sox in.wav -r 24000 -c 1 -b 16 out.wav)"
            )
        return wav.readframes(wav.getnframes())


def write_pcm16(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(BYTES_PER_SAMPLE_PCM16)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)


@dataclass
class Conversation:
    """What came back: Moshi's audio on the input's timeline, and its words."""

    audio: bytearray = field(default_factory=bytearray)
    transcript: list[str] = field(default_factory=list)
    responses: int = 0
    errors: list[str] = field(default_factory=list)
    mid_line: bool = False
    """Transcript text was printed since the last newline."""

    def fit(self, length: int) -> bytes:
        """The audio padded with silence or cut to exactly `length` bytes (the input's timeline)."""
        return bytes(self.audio[:length]) + b"\0" * max(0, length - len(self.audio))

    def place(self, delta: bytes, at_byte: int) -> None:
        # Moshi answers at most one frame per input frame; never write before what was already placed.
        start = max(at_byte, len(self.audio))
        self.audio.extend(b"\0" * (start - len(self.audio)))
        self.audio.extend(delta)


async def converse(
    url: str, model: str, pcm: bytes, *, api_key: str = "unused", beta: bool = False, tail_s: float = 2.0
) -> Conversation:
    client = AsyncOpenAI(api_key=api_key, websocket_base_url=url)
    realtime: Any = client.beta.realtime if beta else client.realtime
    result = Conversation()
    chunk = FRAME_SAMPLES * BYTES_PER_SAMPLE_PCM16
    sent = 0
    async with realtime.connect(model=model) as conn:

        async def send() -> None:
            nonlocal sent
            silence = bytes(int(tail_s * SAMPLE_RATE) * BYTES_PER_SAMPLE_PCM16)  # let Moshi finish
            audio = pcm + silence
            for start in range(0, len(audio), chunk):
                piece = audio[start : start + chunk]
                await conn.input_audio_buffer.append(audio=encode_base64(piece))
                sent = start
                await asyncio.sleep(FRAME_S)
            await asyncio.sleep(0.5)
            await conn.close()

        sender = asyncio.create_task(send())
        try:
            async for event in conn:
                if event.type in _AUDIO_DELTA:
                    result.place(decode_base64(event.delta), sent)
                elif event.type in _TRANSCRIPT_DELTA:
                    result.transcript.append(event.delta)
                    print(event.delta, end="", flush=True)
                    result.mid_line = True
                elif event.type == "response.done":
                    result.responses += 1
                    details = event.response.status_details
                    reason = getattr(details, "reason", None) if details is not None else None
                    print(f"  [{status_label(event.response.status, reason)}]", flush=True)
                    result.mid_line = False
                elif event.type == "error":
                    result.errors.append(f"{event.error.code}: {event.error.message}")
                    print(f"error: {event.error.code}: {event.error.message}", file=sys.stderr)
        finally:
            sender.cancel()
    return result


_REASONS = {
    "turn_detected": "you spoke over Moshi (server VAD barge-in)",
    "client_cancelled": "this client cancelled it",
    "max_output_tokens": "the response reached its token limit",
}


def status_label(status: str | None, reason: str | None) -> str:
    """A reply's end in words: `cancelled` alone after most replies reads as a failure, when it is the
    server's VAD hearing the input speak over Moshi (the OpenAI `turn_detected` reason)."""
    if reason is None:
        return str(status)
    return f"{status}: {_REASONS.get(reason, reason)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.client", description=__doc__)
    parser.add_argument(
        "--url",
        default="ws://127.0.0.1:8000/v1",
        help="WebSocket base URL (default: %(default)s, where `make serve` listens; `make serve PORT=8123` "
        "needs --url ws://127.0.0.1:8123/v1)",
    )
    parser.add_argument("--model", default="moshi-sft")
    parser.add_argument("--input", type=Path, required=True, help="24 kHz mono 16-bit WAV")
    parser.add_argument("--output", type=Path, help="where to write Moshi's audio (WAV)")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--beta", action="store_true", help="speak the beta dialect")
    parser.add_argument(
        "--tail-s", type=float, default=2.0, help="silence sent after the input for Moshi to finish"
    )
    args = parser.parse_args(argv)
    try:
        pcm = read_pcm16(args.input)
    except (WavFormatError, OSError, wave.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(
            converse(args.url, args.model, pcm, api_key=args.api_key, beta=args.beta, tail_s=args.tail_s)
        )
    except OSError as exc:  # nothing listening, DNS, TLS
        print(
            f"error: cannot connect to {args.url} ({exc}); is the server running (make serve)?",
            file=sys.stderr,
        )
        return 3
    except websockets.ConnectionClosed as exc:
        # A refusal (unknown model, full, bad key) arrives as an error event before the close: already shown.
        print(
            f"error: the server closed the session ({exc.rcvd.code if exc.rcvd else 'no close frame'})",
            file=sys.stderr,
        )
        return 1
    length = len(pcm) + int(args.tail_s * SAMPLE_RATE) * BYTES_PER_SAMPLE_PCM16
    audio = result.fit(length)
    if args.output is not None:
        write_pcm16(args.output, audio)
    if result.mid_line:
        print()
    print(
        f"{result.responses} response(s); wrote {len(audio) / (BYTES_PER_SAMPLE_PCM16 * SAMPLE_RATE):.2f} s "
        f"(the input's {len(pcm) / (BYTES_PER_SAMPLE_PCM16 * SAMPLE_RATE):.2f} s + {args.tail_s:g} s tail)"
    )
    return 1 if result.errors else 0
