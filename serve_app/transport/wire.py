"""Sans-I/O message codec of the frame channel: length-prefixed binary messages, numpy arrays inside.

Every message is `u32 length | u8 kind | body` (little-endian). Audio is float32 PCM at 24 kHz; a tick's
frames travel as one array of shape [n, FRAME_SAMPLES] with the sessions' lease ids beside it (frames of a
text-only model carry no audio: a flag says which rows are present), then each frame's step records (the
history a session keeps to be rebuilt elsewhere: serve_app/engine/history.py) as one int32 block.
A session's persona and scripted speech travel as their own messages on the same connection, so they are
applied in the order the session sent them relative to its audio.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame, Persona

Pcm = npt.NDArray[np.float32]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A message above this is a protocol error (a tick of 1024 slots is 7.9 MB)."""

_NO_PCM = np.zeros(0, np.float32)
_LENGTH = struct.Struct("<I")
_HELLO = struct.Struct("<16s")
_COUNT = struct.Struct("<I")
_TICK = struct.Struct("<dI")
_WIDTH = struct.Struct("<H")
_NO_RECORDS = np.zeros((0, 0), np.int32)


class Kind(IntEnum):
    HELLO = 1
    """ingress → replica: the replica's token (proves the ingress got it from an admission)."""
    WELCOME = 2
    """replica → ingress: the replica's id, so the ingress knows which replica it reached."""
    ATTACH = 3
    """ingress → replica: these leases' frames go to this connection."""
    AUDIO = 4
    """ingress → replica: PCM for leases."""
    RELEASE = 5
    """ingress → replica: these sessions ended; free their slots."""
    FRAMES = 6
    """replica → ingress: one tick's output for every session of the pair."""
    ENDED = 7
    """replica → ingress: a lease ended on the replica's side (code + message)."""
    PERSONA = 8
    """ingress → replica: a lease's persona (voice, role text), before its first audio."""
    SAY = 9
    """ingress → replica: scripted speech for a lease (replaces its running script)."""
    STOP_SAYING = 10
    """ingress → replica: cancel a lease's running script."""


class _FrameFlag:
    """Bits of a frame's flags byte in a FRAMES message."""

    SPEAKING = 1
    TEXT = 2
    AUDIO = 4
    SCRIPTED = 8
    SCRIPT_DONE = 16


_PERSONA_VOICE = 1
_PERSONA_INSTRUCTIONS = 2


class WireError(Exception):
    """The peer sent bytes that are not a valid message: the connection is closed."""


@dataclass(frozen=True, slots=True)
class Hello:
    token: bytes


@dataclass(frozen=True, slots=True)
class Welcome:
    replica_id: str


@dataclass(frozen=True, slots=True)
class Attach:
    leases: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Release:
    leases: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Audio:
    leases: tuple[int, ...]
    chunks: tuple[Pcm, ...]


@dataclass(frozen=True, slots=True)
class Frames:
    tick_s: float
    """Wall time of the tick that produced them."""
    leases: tuple[int, ...]
    frames: tuple[EngineFrame, ...]


@dataclass(frozen=True, slots=True)
class Ended:
    lease: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SetPersona:
    lease: int
    persona: Persona


@dataclass(frozen=True, slots=True)
class Say:
    lease: int
    text: str


@dataclass(frozen=True, slots=True)
class StopSaying:
    lease: int


Message = Hello | Welcome | Attach | Release | Audio | Frames | Ended | SetPersona | Say | StopSaying


def _frame(kind: Kind, *parts: bytes) -> bytes:
    size = 1 + sum(len(p) for p in parts)
    return b"".join((_LENGTH.pack(size), bytes((kind,)), *parts))


def _ids(leases: Sequence[int]) -> bytes:
    return _COUNT.pack(len(leases)) + np.asarray(leases, dtype="<u4").tobytes()


def encode_hello(token: bytes) -> bytes:
    if len(token) != _HELLO.size:
        raise ValueError(f"a channel token is {_HELLO.size} bytes, got {len(token)}")
    return _frame(Kind.HELLO, token)


def encode_welcome(replica_id: str) -> bytes:
    return _frame(Kind.WELCOME, replica_id.encode())


def encode_attach(leases: Sequence[int]) -> bytes:
    return _frame(Kind.ATTACH, _ids(leases))


def encode_release(leases: Sequence[int]) -> bytes:
    return _frame(Kind.RELEASE, _ids(leases))


def encode_audio(leases: Sequence[int], chunks: Sequence[Pcm]) -> bytes:
    if len(leases) != len(chunks):
        raise ValueError("one chunk per lease")
    sizes = np.fromiter((c.size for c in chunks), dtype="<u4", count=len(chunks))
    pcm = np.concatenate(chunks).astype("<f4", copy=False) if chunks else np.zeros(0, "<f4")
    return _frame(Kind.AUDIO, _ids(leases), sizes.tobytes(), pcm.tobytes())


def encode_frames(tick_s: float, leases: Sequence[int], frames: Sequence[EngineFrame]) -> bytes:
    n = len(frames)
    if len(leases) != n:
        raise ValueError("one frame per lease")
    texts = [(f.text or "").encode() for f in frames]
    for f in frames:
        if f.pcm.size not in (0, FRAME_SAMPLES):
            raise ValueError(f"a frame has {f.pcm.size} samples, not {FRAME_SAMPLES} or none")
    flags = np.fromiter((_flags(f) for f in frames), dtype="u1", count=n)
    lengths = np.fromiter((len(t) for t in texts), dtype="<u4", count=n)
    with_audio = [f.pcm for f in frames if f.pcm.size]
    pcm = np.stack(with_audio).astype("<f4", copy=False) if with_audio else np.zeros(0, "<f4")
    with_records = [f.history for f in frames if f.history.size]
    width = with_records[0].shape[1] if with_records else 0
    if any(r.shape[1] != width for r in with_records):
        raise ValueError("every frame of a tick has records of the same width")
    steps = np.fromiter((len(f.history) if f.history.size else 0 for f in frames), dtype="<u2", count=n)
    records = np.concatenate(with_records).astype("<i4", copy=False) if with_records else np.zeros(0, "<i4")
    return _frame(
        Kind.FRAMES, _TICK.pack(tick_s, n), _ids(leases)[_COUNT.size :], flags.tobytes(),
        lengths.tobytes(), pcm.tobytes(), b"".join(texts), steps.tobytes(), _WIDTH.pack(width),
        records.tobytes(),
    )  # fmt: skip


def _flags(frame: EngineFrame) -> int:
    return (
        _FrameFlag.SPEAKING * frame.speaking
        | _FrameFlag.TEXT * (frame.text is not None)
        | _FrameFlag.AUDIO * (frame.pcm.size > 0)
        | _FrameFlag.SCRIPTED * frame.scripted
        | _FrameFlag.SCRIPT_DONE * frame.script_done
    )


def encode_persona(lease: int, persona: Persona) -> bytes:
    voice = (persona.voice or "").encode()
    present = _PERSONA_VOICE * (persona.voice is not None) | _PERSONA_INSTRUCTIONS * (
        persona.instructions is not None
    )
    instructions = (persona.instructions or "").encode()
    return _frame(
        Kind.PERSONA, _COUNT.pack(lease), bytes((present,)), _COUNT.pack(len(voice)), voice, instructions
    )


def encode_say(lease: int, text: str) -> bytes:
    return _frame(Kind.SAY, _COUNT.pack(lease), text.encode())


def encode_stop_saying(lease: int) -> bytes:
    return _frame(Kind.STOP_SAYING, _COUNT.pack(lease))


def encode_ended(lease: int, code: str, message: str) -> bytes:
    code_bytes = code.encode()
    return _frame(Kind.ENDED, _COUNT.pack(lease), bytes((len(code_bytes),)), code_bytes, message.encode())


class _Body:
    """A cursor over one message body; every read checks the bounds."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self._at + size > len(self._data):
            raise WireError("message truncated")
        part = self._data[self._at : self._at + size]
        self._at += size
        return part

    def array(self, dtype: str, count: int) -> npt.NDArray[np.generic]:
        item = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(item * count), dtype=dtype, count=count)

    def ids(self, count: int | None = None) -> tuple[int, ...]:
        if count is None:
            (count,) = _COUNT.unpack(self.take(_COUNT.size))
        return tuple(int(i) for i in self.array("<u4", count))

    def rest(self) -> memoryview:
        return self.take(len(self._data) - self._at)

    def done(self) -> None:
        if self._at != len(self._data):
            raise WireError("trailing bytes in message")


def message_length(prefix: bytes) -> int:
    """The length announced by a 4-byte prefix; raises WireError when it is out of bounds."""
    (size,) = _LENGTH.unpack(prefix)
    if not 1 <= size <= MAX_MESSAGE_BYTES:
        raise WireError(f"message of {size} bytes")
    return int(size)


PREFIX_BYTES = _LENGTH.size


def decode(message: bytes) -> Message:
    """Decode one message (kind byte + body, without the length prefix); raises WireError."""
    try:
        return _decode(memoryview(message))
    except (UnicodeDecodeError, struct.error, ValueError) as exc:
        raise WireError(f"malformed message: {exc}") from exc


def _decode(view: memoryview) -> Message:
    if not view:
        raise WireError("empty message")
    try:
        kind = Kind(view[0])
    except ValueError:
        raise WireError(f"unknown message kind {view[0]}") from None
    body = _Body(view[1:])
    result: Message
    if kind is Kind.HELLO:
        result = Hello(bytes(body.take(_HELLO.size)))
    elif kind is Kind.WELCOME:
        result = Welcome(bytes(body.rest()).decode())
    elif kind is Kind.ATTACH:
        result = Attach(body.ids())
    elif kind is Kind.RELEASE:
        result = Release(body.ids())
    elif kind is Kind.AUDIO:
        leases = body.ids()
        sizes = body.array("<u4", len(leases))
        pcm = body.array("<f4", int(sizes.sum())).astype(np.float32)  # a writable copy per message
        chunks = tuple(np.split(pcm, np.cumsum(sizes)[:-1])) if leases else ()
        result = Audio(leases, chunks)
    elif kind is Kind.FRAMES:
        tick_s, n = _TICK.unpack(body.take(_TICK.size))
        leases = body.ids(n)
        flags: npt.NDArray[np.uint8] = body.array("u1", n).astype(np.uint8)
        lengths = body.array("<u4", n)
        rows = int(np.count_nonzero(flags & _FrameFlag.AUDIO))
        pcm = body.array("<f4", rows * FRAME_SAMPLES).astype(np.float32).reshape(rows, FRAME_SAMPLES)
        text = bytes(body.take(int(lengths.sum())))
        steps = body.array("<u2", n)
        (width,) = _WIDTH.unpack(body.take(_WIDTH.size))
        total = int(steps.sum())
        records = body.array("<i4", total * width).astype(np.int32).reshape(total, width)
        frames, at, row, step = [], 0, 0, 0
        for i in range(n):
            flag = int(flags[i])
            piece = text[at : at + int(lengths[i])].decode() if flag & _FrameFlag.TEXT else None
            at += int(lengths[i])
            audio = pcm[row] if flag & _FrameFlag.AUDIO else _NO_PCM
            row += bool(flag & _FrameFlag.AUDIO)
            history = records[step : step + int(steps[i])] if steps[i] else _NO_RECORDS
            step += int(steps[i])
            frames.append(
                EngineFrame(
                    pcm=audio,
                    text=piece,
                    speaking=bool(flag & _FrameFlag.SPEAKING),
                    history=history,
                    scripted=bool(flag & _FrameFlag.SCRIPTED),
                    script_done=bool(flag & _FrameFlag.SCRIPT_DONE),
                )
            )
        result = Frames(tick_s, leases, tuple(frames))
    elif kind is Kind.PERSONA:
        (lease,) = _COUNT.unpack(body.take(_COUNT.size))
        present = body.take(1)[0]
        (size,) = _COUNT.unpack(body.take(_COUNT.size))
        voice = bytes(body.take(size)).decode()
        instructions = bytes(body.rest()).decode()
        if (not present & _PERSONA_VOICE and voice) or (not present & _PERSONA_INSTRUCTIONS and instructions):
            raise WireError("a persona field marked absent has a value")
        persona = Persona(
            voice=voice if present & _PERSONA_VOICE else None,
            instructions=instructions if present & _PERSONA_INSTRUCTIONS else None,
        )
        result = SetPersona(lease, persona)
    elif kind is Kind.SAY:
        (lease,) = _COUNT.unpack(body.take(_COUNT.size))
        result = Say(lease, bytes(body.rest()).decode())
    elif kind is Kind.STOP_SAYING:
        (lease,) = _COUNT.unpack(body.take(_COUNT.size))
        result = StopSaying(lease)
    else:
        (lease,) = _COUNT.unpack(body.take(_COUNT.size))
        code = bytes(body.take(body.take(1)[0])).decode()
        result = Ended(lease, code, bytes(body.rest()).decode())
    body.done()
    return result
