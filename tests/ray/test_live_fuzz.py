"""Fuzzing the live Ray Serve app: malformed events of both dialects over real WebSockets, beside a
well-behaved session that streams speech the whole time. Every fuzzed message is answered by exactly one
`error` that strictly validates against the `openai` type, the fuzzed sockets stay open, and the steady
session's audio keeps flowing.

It runs on Ray, not on the in-process test server: there the flood's parsing and the engine's tick share
one interpreter, and the GIL hand-offs of a busy thread (5 ms each) stretch a tiny tick past real time,
a contention that the deployed topology (ingress and model replica in separate processes) does not have.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from serve_app.protocol.dialect import Dialect
from tests.fuzz_events import expected_event_id, malformed
from tests.ray.conftest import MAX_MESSAGE_BYTES, Cluster
from tests.server.test_limits import stream_speech
from tests.session.harness import strict_check

EVENTS_PER_EXAMPLE = 50
EXAMPLES = 200  # × 50 events over the two dialects' sockets: 10,000 through the whole server
REAL_TIME_SHARE = 0.9
"""Share of its real-time frames the engine must produce for the steady session while the fuzzing runs
(frames, not audio deltas: the tiny random Moshi may stay silent for seconds whatever the load)."""


ADMISSION_WAIT_S = 30.0


class SteadySession:
    """A well-behaved client on its own thread and event loop: paced speech out, each audio delta noted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.deltas: list[float] = []
        self.errors: list[dict[str, Any]] = []
        self.closed: str | None = None
        self.session_id = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SteadySession:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.deltas:  # audio is flowing before the fuzzing starts
            assert time.monotonic() < deadline and self.closed is None, "the steady session never got audio"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _run(self) -> None:
        async with websockets.connect(self.url) as ws:
            self.session_id = json.loads(await ws.recv())["session"]["id"]
            # Server VAD stays on (it runs under the fuzzing too), but without barge-in: the user's speech
            # would otherwise cancel Moshi's responses, and the audio gap measured here with them.
            detection = {"type": "server_vad", "interrupt_response": False}
            update = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
            await ws.send(json.dumps({"type": "session.update", "session": update}))
            speaking = asyncio.create_task(self._speak(ws))
            reading = asyncio.create_task(self._read(ws))
            while not self._stop.is_set() and not reading.done():
                await asyncio.sleep(0.05)
            speaking.cancel()
            reading.cancel()
            await asyncio.gather(speaking, reading, return_exceptions=True)

    async def _speak(self, ws: websockets.ClientConnection) -> None:
        while True:  # 10 s of speech, again and again (made once: it is slow to synthesise)
            await stream_speech(ws, 10.0, seed=5)

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "response.output_audio.delta":
                    self.deltas.append(time.monotonic())
                elif event["type"] == "error":
                    self.errors.append(event["error"])
        except websockets.ConnectionClosed as exc:
            self.closed = str(exc)
        else:
            self.closed = "closed"

    def deltas_between(self, since: float, until: float) -> int:
        return sum(since <= t <= until for t in self.deltas)


class FuzzedSocket:
    """One socket of a dialect, kept open across every hypothesis example."""

    def __init__(self, url: str, dialect: Dialect) -> None:
        headers = {"OpenAI-Beta": "realtime=v1"} if dialect is Dialect.BETA else {}
        self.dialect = dialect
        self.ws: ClientConnection = self._admitted(url, headers)
        if dialect is Dialect.BETA:
            assert self.next()["type"] == "conversation.created"
        self.probes = 0

    def _admitted(self, url: str, headers: dict[str, str]) -> ClientConnection:
        """A socket past admission: a replica whose recent ticks leave no room refuses at once (a busy
        moment of the 2-core machine, e.g. a replica starting next door); that is not what this tests."""
        deadline = time.monotonic() + ADMISSION_WAIT_S
        while True:
            ws = connect(url, additional_headers=headers)
            first = strict_check(self.dialect, str(ws.recv(timeout=10)))
            if first["type"] == "session.created":
                return ws
            ws.close()
            assert first["type"] == "error" and first["error"]["code"] == "server_at_capacity", first
            assert time.monotonic() < deadline, "still refused"
            time.sleep(0.5)

    def next(self) -> dict[str, Any]:
        return strict_check(self.dialect, str(self.ws.recv(timeout=10)))

    def probe(self) -> None:
        """A valid event whose answer must come next: no extra event was left behind by the fuzzing."""
        self.probes += 1
        probe_id = f"probe_{self.probes}"
        self.ws.send(json.dumps({"type": "input_audio_buffer.clear", "event_id": probe_id}))
        answer = self.next()
        assert answer["type"] == "input_audio_buffer.cleared", (probe_id, answer)


def url(cluster: Cluster) -> str:
    return f"{cluster.ws_base}/realtime?model=moshi-base"  # 2 fixed replicas: no autoscaling here


@pytest.fixture(scope="module")
def steady(cluster: Cluster) -> Iterator[SteadySession]:
    with SteadySession(url(cluster)) as session:
        yield session


@pytest.fixture(scope="module")
def sockets(cluster: Cluster, steady: SteadySession) -> Iterator[dict[Dialect, FuzzedSocket]]:
    del steady  # started first: it must be streaming before the first fuzzed event
    opened: dict[Dialect, FuzzedSocket] = {}
    try:
        for dialect in Dialect:
            opened[dialect] = FuzzedSocket(url(cluster), dialect)
        yield opened
    finally:  # also when a later socket could not open: a socket left open would hold its slot
        for socket in opened.values():
            socket.ws.close()


class Tally:
    sent = 0
    started: float | None = None
    finished: float | None = None
    frames_at_start = 0


def frames_served(cluster: Cluster, session_id: str) -> int:
    """Frames the engine produced for a session, as the ingress counted them."""
    return sum(cluster.session_replicas().get(session_id, {}).values())


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    dialect=st.sampled_from(list(Dialect)),
    events=st.lists(malformed(MAX_MESSAGE_BYTES), min_size=EVENTS_PER_EXAMPLE, max_size=EVENTS_PER_EXAMPLE),
)
def test_every_malformed_event_on_a_live_socket_gets_one_valid_error(
    cluster: Cluster,
    sockets: dict[Dialect, FuzzedSocket],
    steady: SteadySession,
    dialect: Dialect,
    events: list[str | bytes],
) -> None:
    socket = sockets[dialect]
    if Tally.started is None:
        Tally.frames_at_start = frames_served(cluster, steady.session_id)
        Tally.started = time.monotonic()
    for event in events:
        socket.ws.send(event)  # str: a text frame; bytes: a binary one
        answer = socket.next()  # strict-validated against the dialect's SDK type
        assert answer["type"] == "error", answer
        assert answer["error"]["code"] and answer["error"]["message"]
        if (eid := expected_event_id(event, MAX_MESSAGE_BYTES)) is not None:
            assert answer["error"]["event_id"] == eid
        Tally.sent += 1
    socket.probe()
    Tally.finished = time.monotonic()


def test_the_fuzzed_sockets_stayed_open_and_the_steady_session_kept_its_audio(
    cluster: Cluster, sockets: dict[Dialect, FuzzedSocket], steady: SteadySession
) -> None:
    # Runs after the property test (file order).
    produced = frames_served(cluster, steady.session_id) - Tally.frames_at_start
    ended = time.monotonic()
    assert Tally.sent >= EXAMPLES * EVENTS_PER_EXAMPLE, Tally.sent
    assert Tally.started is not None and Tally.finished is not None
    for socket in sockets.values():
        socket.probe()  # still open and answering
    assert steady.closed is None and steady.errors == [], (steady.closed, steady.errors)
    due = (ended - Tally.started) / 0.08
    deltas = steady.deltas_between(Tally.started, Tally.finished)
    took = Tally.finished - Tally.started
    print(
        f"live fuzz: {Tally.sent} events in {took:.1f} s; steady session {produced} of {due:.0f} frames, "
        f"{deltas} audio deltas"
    )
    assert produced >= REAL_TIME_SHARE * due - 3, f"the steady session got {produced} of {due:.0f} frames"
    assert deltas > 0, "no audio reached the steady session during the fuzzing"
