"""Property test of delegation: random interleavings of Moshi's frames, the clock, user turns, client
events and the delegate's answers (words, tool calls, failures, in any order and at any time, superseded
or not). Whatever happens, responses stay one at a time, every response.created gets exactly one
response.done, nothing of a response flows outside it, and once the delegate has answered every ask and
Moshi is quiet no response is left open."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.constants import FRAME_SAMPLES
from serve_app.delegate.config import DelegateConfig
from serve_app.delegate.messages import DelegateReply, ToolCall
from serve_app.engine.port import EngineFrame
from serve_app.protocol.dialect import Dialect
from serve_app.session.engine_requests import Say, StopSaying

from .conftest import FAST
from .harness import Harness

DELEGATE = DelegateConfig(base_url="http://127.0.0.1:9/v1", model="test", floor_wait_ms=300)
SETTINGS = FAST.model_copy(update={"response_wait_ms": 800, "max_utterance_ms": 2000})
TOOL = {"type": "function", "name": "lookup", "description": "", "parameters": {}}

OPS = st.one_of(
    st.tuples(st.just("frames"), st.integers(1, 6), st.booleans()),
    st.tuples(st.just("clock"), st.sampled_from([0.1, 0.3, 0.6, 2.0])),
    st.tuples(st.just("user_turn")),
    st.tuples(st.just("speech_started")),
    st.tuples(st.just("reply"), st.sampled_from(["text", "calls", "empty"]), st.booleans()),
    st.tuples(st.just("fail"), st.sampled_from(["delegate_timeout", "delegate_failed"]), st.booleans()),
    st.tuples(st.just("create")),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("output")),
    st.tuples(st.just("script")),
)


@dataclass
class Checker:
    h: Harness
    now: float = 100.0
    audio_ms: int = 0
    open_response: str | None = None
    created: int = 0
    done: int = 0
    asks: list[int] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def see(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind = event["type"]
            if kind == "response.created":
                assert self.open_response is None, "two responses at once"
                self.open_response = event["response"]["id"]
                self.created += 1
            elif kind == "response.done":
                assert event["response"]["id"] == self.open_response
                self.open_response = None
                self.done += 1
                self.calls += [
                    o["call_id"] for o in event["response"]["output"] if o["type"] == "function_call"
                ]
            elif "response_id" in event and kind.startswith("response."):
                assert event["response_id"] == self.open_response, event
        self.asks += [ask.ask_id for ask in self.h.session.delegate_asks()]
        for request in self.h.requests():
            if isinstance(request, Say):
                # As the engine reports a script: each piece with its exact span, then a pause.
                first, *rest = request.text.split(" ")
                self.script = [first, *[f" {word}" for word in rest], ""]
            elif isinstance(request, StopSaying):
                self.script = []

    def frames(self, count: int, speaking: bool) -> None:
        pcm = [0.1 if speaking else 0.0] * FRAME_SAMPLES
        for _ in range(count):
            if self.script:
                piece = self.script.pop(0)
                frame = EngineFrame(
                    pcm=_pcm(0.2),
                    text=piece or None,
                    speaking=bool(piece),
                    scripted=True,
                    script_done=not self.script,
                )
            else:
                frame = EngineFrame(pcm=_pcm(pcm[0]), text=" x" if speaking else None, speaking=speaking)
            self.h.session.receive_engine_frame(frame)
            self.see(self.h.events())

    def answer(self, kind: str, newest: bool, *, fail: str | None = None) -> None:
        if not self.asks:
            return
        ask_id = self.asks.pop(-1 if newest else 0)
        if fail is not None:
            self.h.session.delegate_failed(ask_id, fail, "failed")
        else:
            calls = (
                (ToolCall(f"call_{ask_id}", "lookup", json.dumps({"q": ask_id})),) if kind == "calls" else ()
            )
            text = "Here is the answer" if kind == "text" else ""
            self.h.session.delegate_replied(ask_id, DelegateReply(text=text, calls=calls), self.now)
        self.see(self.h.events())

    def run(self, op: tuple[Any, ...]) -> None:
        session, name = self.h.session, op[0]
        if name == "frames":
            self.frames(op[1], op[2])
            return
        if name == "clock":
            self.now += op[1]
            session.advance_clock(self.now)
        elif name == "user_turn":
            session.speech_started(self.audio_ms)
            self.audio_ms += 800
            session.speech_stopped(self.audio_ms)
            for request in session.transcription_requests():
                session.input_transcription_completed(request.item_id, "what is it")
        elif name == "speech_started":
            session.speech_started(self.audio_ms)
        elif name in ("reply", "fail"):
            self.answer(op[1], op[2], fail=op[1] if name == "fail" else None)
            return
        elif name == "create":
            session.receive_client_text(json.dumps({"type": "response.create"}))
        elif name == "cancel":
            session.receive_client_text(json.dumps({"type": "response.cancel"}))
        elif name == "output" and self.calls:
            item = {"type": "function_call_output", "call_id": self.calls[-1], "output": "42"}
            session.receive_client_text(json.dumps({"type": "conversation.item.create", "item": item}))
        elif name == "script":
            session.receive_client_text(json.dumps(self.h.assistant_text("Scripted words")))
        self.see(self.h.events())


def _pcm(level: float) -> Any:
    import numpy as np

    return np.full(FRAME_SAMPLES, level, dtype=np.float32)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(dialect=st.sampled_from([Dialect.GA, Dialect.BETA]), steps=st.lists(OPS, min_size=5, max_size=40))
def test_delegated_responses_open_and_close_in_pairs(dialect: Dialect, steps: list[tuple[Any, ...]]) -> None:
    h = Harness(dialect, SETTINGS, delegate=DELEGATE)
    session: dict[str, Any] = {"tools": [TOOL], **({"type": "realtime"} if h.ga else {})}
    h.send({"type": "session.update", "session": session})
    h.update_input(turn_detection={"type": "server_vad"})
    checker = Checker(h)
    for step in steps:
        checker.run(step)
    # Settle: the delegate answers whatever is still asked, scripts run out, Moshi goes quiet, time passes.
    while checker.asks:
        checker.answer("text", newest=False)
    for _ in range(4):
        checker.frames(30, False)
        checker.run(("clock", 2.0))
    assert checker.open_response is None
    assert checker.created == checker.done
