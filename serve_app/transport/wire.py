"""Sans-I/O message codec of the frame channel: length-prefixed binary messages, numpy arrays inside.

Every message is `u32 length | u8 kind | body` (little-endian). Audio is float32 PCM at 24 kHz; a tick's
frames travel as one array of shape [n, FRAME_SAMPLES] with the sessions' lease ids beside it (frames of a
text-only model carry no audio: a flag says which rows are present), then each frame's step records (the
history a session keeps to be rebuilt elsewhere: serve_app/engine/history.py) as one int32 block.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame

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


Message = Hello | Welcome | Attach | Release | Audio | Frames | Ended


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
    flags = np.fromiter(
        ((f.speaking << 0) | ((f.text is not None) << 1) | ((f.pcm.size > 0) << 2) for f in frames),
        dtype="u1",
        count=n,
    )
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
        rows = int(np.count_nonzero(flags & 4))
        pcm = body.array("<f4", rows * FRAME_SAMPLES).astype(np.float32).reshape(rows, FRAME_SAMPLES)
        text = bytes(body.take(int(lengths.sum())))
        steps = body.array("<u2", n)
        (width,) = _WIDTH.unpack(body.take(_WIDTH.size))
        total = int(steps.sum())
        records = body.array("<i4", total * width).astype(np.int32).reshape(total, width)
        frames, at, row, step = [], 0, 0, 0
        for i in range(n):
            piece = text[at : at + int(lengths[i])].decode() if flags[i] & 2 else None
            at += int(lengths[i])
            audio = pcm[row] if flags[i] & 4 else _NO_PCM
            row += bool(flags[i] & 4)
            history = records[step : step + int(steps[i])] if steps[i] else _NO_RECORDS
            step += int(steps[i])
            frames.append(EngineFrame(pcm=audio, text=piece, speaking=bool(flags[i] & 1), history=history))
        result = Frames(tick_s, leases, tuple(frames))
    else:
        (lease,) = _COUNT.unpack(body.take(_COUNT.size))
        code = bytes(body.take(body.take(1)[0])).decode()
        result = Ended(lease, code, bytes(body.rest()).decode())
    body.done()
    return result
