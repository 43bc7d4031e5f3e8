"""The frame channel's codec (sans I/O) and the stream reader on top of it."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.constants import FRAME_SAMPLES
from serve_app.engine.port import EngineFrame, Persona
from serve_app.transport import wire
from serve_app.transport.stream import read_message

TOKEN = bytes(range(16))
FUZZ = settings(derandomize=True, database=None, max_examples=300, deadline=None)


def roundtrip(data: bytes) -> wire.Message:
    """Decode an encoded message the way a reader does: the prefix announces the rest exactly."""
    assert wire.message_length(data[: wire.PREFIX_BYTES]) == len(data) - wire.PREFIX_BYTES
    return wire.decode(data[wire.PREFIX_BYTES :])


def body(data: bytes) -> bytes:
    return data[wire.PREFIX_BYTES :]


def pcm(samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(samples).astype(np.float32)


def frame(seed: int, text: str | None, speaking: bool) -> EngineFrame:
    return EngineFrame(pcm=pcm(FRAME_SAMPLES, seed), text=text, speaking=speaking)


# --- round trips -----------------------------------------------------------------------------------------


def test_hello_roundtrip() -> None:
    data = wire.encode_hello(TOKEN)
    assert data[wire.PREFIX_BYTES] == wire.Kind.HELLO
    assert roundtrip(data) == wire.Hello(TOKEN)


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_hello_needs_a_16_byte_token(size: int) -> None:
    with pytest.raises(ValueError):
        wire.encode_hello(b"x" * size)


@pytest.mark.parametrize("replica_id", ["", "replica-1", "répliqué-模型-🎉"])
def test_welcome_roundtrip(replica_id: str) -> None:
    assert roundtrip(wire.encode_welcome(replica_id)) == wire.Welcome(replica_id)


@pytest.mark.parametrize("leases", [(), (1,), (7, 0, 2**32 - 1, 42)])
def test_attach_and_release_roundtrip(leases: tuple[int, ...]) -> None:
    assert roundtrip(wire.encode_attach(leases)) == wire.Attach(leases)
    assert roundtrip(wire.encode_release(list(leases))) == wire.Release(leases)


@pytest.mark.parametrize(
    "sizes",
    [(), (FRAME_SAMPLES,), (0,), (1, FRAME_SAMPLES, 0, 5000, 3), (0, 0)],
    ids=["no-leases", "one-frame", "one-empty", "mixed", "all-empty"],
)
def test_audio_roundtrip(sizes: tuple[int, ...]) -> None:
    leases = tuple(10 + i for i in range(len(sizes)))
    chunks = tuple(pcm(size, seed) for seed, size in enumerate(sizes))
    decoded = roundtrip(wire.encode_audio(leases, chunks))
    assert isinstance(decoded, wire.Audio)
    assert decoded.leases == leases and len(decoded.chunks) == len(chunks)
    for got, sent in zip(decoded.chunks, chunks, strict=True):
        assert got.dtype == np.float32 and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
        assert got.flags.writeable  # a copy, not a view of the receive buffer


def test_audio_is_sent_as_float32() -> None:
    samples = np.linspace(-1, 1, 100)  # float64 in
    decoded = roundtrip(wire.encode_audio([3], [samples]))
    assert isinstance(decoded, wire.Audio)
    assert decoded.chunks[0].dtype == np.float32
    np.testing.assert_array_equal(decoded.chunks[0], samples.astype(np.float32))


def test_audio_needs_one_chunk_per_lease() -> None:
    with pytest.raises(ValueError):
        wire.encode_audio([1, 2], [pcm(10, 0)])


def test_frames_roundtrip_empty() -> None:
    decoded = roundtrip(wire.encode_frames(0.0125, [], []))
    assert decoded == wire.Frames(0.0125, (), ())


def test_frames_roundtrip() -> None:
    frames = (
        frame(1, None, False),
        frame(2, "", True),
        frame(3, " héllo 世界 🎉", True),
    )
    leases = (5, 2**32 - 1, 0)
    decoded = roundtrip(wire.encode_frames(0.0371234567, leases, frames))
    assert isinstance(decoded, wire.Frames)
    assert decoded.tick_s == 0.0371234567  # a double: exact
    assert decoded.leases == leases
    assert [f.text for f in decoded.frames] == [None, "", " héllo 世界 🎉"]
    assert [f.speaking for f in decoded.frames] == [False, True, True]
    for got, sent in zip(decoded.frames, frames, strict=True):
        assert got.pcm.dtype == np.float32 and got.pcm.shape == (FRAME_SAMPLES,)
        np.testing.assert_array_equal(got.pcm, sent.pcm)


def test_frames_say_which_text_was_scripted_and_where_the_script_ended() -> None:
    frames = (
        EngineFrame(pcm=pcm(FRAME_SAMPLES, 1), text=" hello", speaking=True, scripted=True),
        EngineFrame(pcm=pcm(FRAME_SAMPLES, 2), text=None, speaking=False, scripted=True, script_done=True),
        EngineFrame(pcm=pcm(FRAME_SAMPLES, 3), text=" own", speaking=True),
        EngineFrame(pcm=np.zeros(0, np.float32), text="x", speaking=True, scripted=True, script_done=True),
    )
    decoded = roundtrip(wire.encode_frames(0.01, [1, 2, 3, 4], frames))
    assert isinstance(decoded, wire.Frames)
    assert [(f.text, f.speaking, f.scripted, f.script_done) for f in decoded.frames] == [
        (" hello", True, True, False),
        (None, False, True, True),
        (" own", True, False, False),
        ("x", True, True, True),
    ]
    assert [f.pcm.size for f in decoded.frames] == [FRAME_SAMPLES, FRAME_SAMPLES, FRAME_SAMPLES, 0]


@pytest.mark.parametrize(
    "persona",
    [
        Persona(voice=None, instructions=None),
        Persona(voice="NATF2", instructions=None),
        Persona(voice=None, instructions="You are a calm guide. 你好 🎉"),
        Persona(voice="VARM4", instructions=""),
        Persona(voice="", instructions="x" * 5000),
    ],
)
def test_persona_roundtrip_keeps_unset_apart_from_empty(persona: Persona) -> None:
    data = wire.encode_persona(2**32 - 1, persona)
    assert data[wire.PREFIX_BYTES] == wire.Kind.PERSONA
    assert roundtrip(data) == wire.SetPersona(2**32 - 1, persona)


@pytest.mark.parametrize("text", ["", "hello there, this is a scripted greeting", "né 世界 🎉\n" * 300])
def test_say_and_stop_saying_roundtrip(text: str) -> None:
    assert roundtrip(wire.encode_say(7, text)) == wire.Say(7, text)
    assert roundtrip(wire.encode_stop_saying(7)) == wire.StopSaying(7)


def test_a_persona_field_marked_absent_with_a_value_is_refused() -> None:
    data = bytearray(body(wire.encode_persona(1, Persona(voice="NATF0", instructions=None))))
    data[5] = 0  # kind | lease u32 | present u8: say the voice is absent while its bytes follow
    with pytest.raises(wire.WireError, match="absent"):
        wire.decode(bytes(data))
    with pytest.raises(wire.WireError):  # a voice length past the end
        wire.decode(bytes([wire.Kind.PERSONA]) + struct.pack("<IBI", 1, 1, 50) + b"NATF0")


def test_text_only_frames_carry_no_audio_beside_frames_that_do() -> None:
    no_audio = np.zeros(0, np.float32)
    frames = [
        EngineFrame(pcm=no_audio, text=" hel", speaking=True),
        frame(6, "lo", True),
        EngineFrame(pcm=no_audio, text=None, speaking=False),
    ]
    encoded = wire.encode_frames(0.5, [1, 2, 3], frames)
    assert len(encoded) < FRAME_SAMPLES * 4 + 100  # one row of PCM on the wire, not three
    decoded = roundtrip(encoded)
    assert isinstance(decoded, wire.Frames)
    assert [f.pcm.size for f in decoded.frames] == [0, FRAME_SAMPLES, 0]
    assert [f.text for f in decoded.frames] == [" hel", "lo", None]
    np.testing.assert_array_equal(decoded.frames[1].pcm, frames[1].pcm)


def test_frames_carry_each_sessions_step_records() -> None:
    rng = np.random.default_rng(3)
    first = rng.integers(0, 32000, (3, 17)).astype(np.int32)  # a slot's first frame: several steps
    later = rng.integers(0, 2048, (1, 17)).astype(np.int32)
    frames = [
        EngineFrame(pcm=frame(1, None, False).pcm, text=None, speaking=False, history=first),
        frame(2, "x", True),  # no records (a text-only model's)
        EngineFrame(pcm=frame(3, " y", True).pcm, text=" y", speaking=True, history=later),
    ]
    decoded = roundtrip(wire.encode_frames(0.01, [1, 2, 3], frames))
    assert isinstance(decoded, wire.Frames)
    np.testing.assert_array_equal(decoded.frames[0].history, first)
    assert decoded.frames[1].history.size == 0
    np.testing.assert_array_equal(decoded.frames[2].history, later)
    assert decoded.frames[2].history.dtype == np.int32


def test_records_of_different_widths_in_one_tick_are_refused() -> None:
    pcm = frame(1, None, False).pcm
    frames = [
        EngineFrame(pcm=pcm, text=None, speaking=False, history=np.zeros((1, width), np.int32))
        for width in (17, 9)
    ]
    with pytest.raises(ValueError, match="same width"):
        wire.encode_frames(0.0, [1, 2], frames)


def test_a_frame_of_any_other_length_is_refused() -> None:
    with pytest.raises(ValueError, match="samples"):
        wire.encode_frames(0.0, [1], [EngineFrame(pcm=np.zeros(10, np.float32), text=None, speaking=False)])


def test_frames_text_and_speaking_are_independent() -> None:
    frames = [frame(4, "word", False), frame(5, None, True)]
    decoded = roundtrip(wire.encode_frames(1.0, [1, 2], frames))
    assert isinstance(decoded, wire.Frames)
    assert [(f.text, f.speaking) for f in decoded.frames] == [("word", False), (None, True)]


def test_frames_need_one_frame_per_lease() -> None:
    with pytest.raises(ValueError):
        wire.encode_frames(0.0, [1], [])


@pytest.mark.parametrize(
    ("code", "message"),
    [("released", ""), ("fell_behind", "412 ms behind real time (limit 300 ms)"), ("ünknöwn", "✗ gone")],
)
def test_ended_roundtrip(code: str, message: str) -> None:
    assert roundtrip(wire.encode_ended(2**32 - 1, code, message)) == wire.Ended(2**32 - 1, code, message)


# --- lengths ---------------------------------------------------------------------------------------------


def _prefix(size: int) -> bytes:
    return struct.pack("<I", size)


@pytest.mark.parametrize("size", [1, 2, 1920 * 4, wire.MAX_MESSAGE_BYTES])
def test_message_length_in_bounds(size: int) -> None:
    assert wire.message_length(_prefix(size)) == size


@pytest.mark.parametrize("size", [0, wire.MAX_MESSAGE_BYTES + 1, 2**32 - 1])
def test_message_length_out_of_bounds(size: int) -> None:
    with pytest.raises(wire.WireError):
        wire.message_length(_prefix(size))


def test_prefix_is_little_endian() -> None:
    data = wire.encode_attach([1, 2])
    assert data[:4] == (len(data) - 4).to_bytes(4, "little")


# --- malformed bodies ------------------------------------------------------------------------------------

STRUCTURED = {
    "hello": wire.encode_hello(TOKEN),
    "attach": wire.encode_attach([1, 2, 3]),
    "attach-empty": wire.encode_attach([]),
    "release": wire.encode_release([9]),
    "audio": wire.encode_audio([1, 2], [pcm(7, 0), pcm(3, 1)]),
    "audio-empty": wire.encode_audio([], []),
    "frames": wire.encode_frames(0.02, [1, 2], [frame(0, "ab", True), frame(1, None, False)]),
    "frames-empty": wire.encode_frames(0.02, [], []),
    "ended": wire.encode_ended(1, "lost", ""),  # an empty message: nothing after the code
    "stop-saying": wire.encode_stop_saying(3),
}
"""Messages whose body has no free-length tail: every strict prefix is truncated, any extra byte trails."""


@pytest.mark.parametrize("name", list(STRUCTURED))
def test_truncated_bodies_raise(name: str) -> None:
    full = body(STRUCTURED[name])
    assert wire.decode(full) is not None
    for cut in range(len(full)):
        with pytest.raises(wire.WireError):
            wire.decode(full[:cut])


@pytest.mark.parametrize("name", [n for n in STRUCTURED if n != "ended"])
def test_trailing_bytes_raise(name: str) -> None:
    with pytest.raises(wire.WireError, match="trailing"):
        wire.decode(body(STRUCTURED[name]) + b"\x00")


@pytest.mark.parametrize("size", [0, 15, 17, 64])
def test_hello_of_the_wrong_length_raises(size: int) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(bytes([wire.Kind.HELLO]) + b"t" * size)


def test_empty_message_raises() -> None:
    with pytest.raises(wire.WireError):
        wire.decode(b"")


@pytest.mark.parametrize("kind", [0, 11, 42, 255])
def test_unknown_kind_raises(kind: int) -> None:
    with pytest.raises(wire.WireError, match="unknown"):
        wire.decode(bytes([kind]) + body(wire.encode_attach([1]))[1:])


BAD_UTF8 = b"ok\xff\xfe"


def test_bad_utf8_raises() -> None:
    welcome = bytes([wire.Kind.WELCOME]) + BAD_UTF8
    ended_message = body(wire.encode_ended(1, "lost", "")) + BAD_UTF8
    ended_code = bytes([wire.Kind.ENDED]) + struct.pack("<I", 1) + bytes([len(BAD_UTF8)]) + BAD_UTF8
    frames = bytearray(body(wire.encode_frames(0.0, [1], [frame(0, "abcd", True)])))
    frames[-4:] = BAD_UTF8
    say = body(wire.encode_say(1, "")) + BAD_UTF8
    persona = body(wire.encode_persona(1, Persona(voice=None, instructions=""))) + BAD_UTF8
    for message in (welcome, ended_message, ended_code, bytes(frames), say, persona):
        with pytest.raises(wire.WireError):
            wire.decode(message)


def test_text_lengths_past_the_end_raise() -> None:
    data = bytearray(body(wire.encode_frames(0.0, [1], [frame(0, "ab", True)])))
    # kind | tick_s f64 | n u32 | leases u32*n | flags u8*n | lengths u32*n | ...
    at = 1 + 12 + 4 + 1
    data[at : at + 4] = struct.pack("<I", 3)
    with pytest.raises(wire.WireError):
        wire.decode(bytes(data))


def test_huge_counts_raise() -> None:
    for kind in (wire.Kind.ATTACH, wire.Kind.RELEASE, wire.Kind.AUDIO):
        with pytest.raises(wire.WireError):
            wire.decode(bytes([kind]) + struct.pack("<I", 2**32 - 1))
    with pytest.raises(wire.WireError):
        wire.decode(bytes([wire.Kind.FRAMES]) + struct.pack("<dI", 0.0, 2**32 - 1))
    sizes = bytes([wire.Kind.AUDIO]) + struct.pack("<III", 1, 1, 2**32 - 1)
    with pytest.raises(wire.WireError):
        wire.decode(sizes)


def _decodes_or_wire_error(data: bytes) -> None:
    try:
        message = wire.decode(data)
    except wire.WireError:
        return
    assert isinstance(message, wire.Message)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    _decodes_or_wire_error(data)


@FUZZ
@given(st.sampled_from(list(wire.Kind)), st.binary(max_size=128))
def test_random_bodies_raise_only_wire_error(kind: wire.Kind, rest: bytes) -> None:
    _decodes_or_wire_error(bytes([kind]) + rest)


@FUZZ
@given(
    st.sampled_from(sorted(STRUCTURED)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 64),
)
def test_mutated_messages_raise_only_wire_error(name: str, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(body(STRUCTURED[name]))
    for at, value in edits:
        data[at % len(data)] = value
    _decodes_or_wire_error(bytes(data[: max(0, len(data) - cut)]))


# --- reading from a stream -------------------------------------------------------------------------------


async def test_read_message_reads_whole_messages_then_none() -> None:
    reader = asyncio.StreamReader()
    data = wire.encode_attach([1, 2]) + wire.encode_welcome("r") + wire.encode_frames(0.5, [], [])
    for at in range(0, len(data), 3):  # in dribbles
        reader.feed_data(data[at : at + 3])
    reader.feed_eof()
    assert await read_message(reader) == wire.Attach((1, 2))
    assert await read_message(reader) == wire.Welcome("r")
    assert await read_message(reader) == wire.Frames(0.5, (), ())
    assert await read_message(reader) is None  # a clean end, between messages


@pytest.mark.parametrize("cut", [2, wire.PREFIX_BYTES, wire.PREFIX_BYTES + 3])
async def test_read_message_eof_inside_a_message_raises(cut: int) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(wire.encode_attach([1, 2])[:cut])
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_message(reader)


@pytest.mark.parametrize("size", [0, wire.MAX_MESSAGE_BYTES + 1])
async def test_read_message_refuses_bad_lengths(size: int) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(_prefix(size) + b"\x03" * 16)
    with pytest.raises(wire.WireError):
        await read_message(reader)
