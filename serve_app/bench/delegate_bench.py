"""Delegate (tools) benchmark: how long a spoken question takes to come back as a tool call and then as the
delegate's spoken answer, and what the delegate path costs the ingress. CPU, tiny embedded model. (A program.)

1. Latency, per mode (`delegate`, `duplex`), `--rounds` fresh sessions each: an in-process server (uvicorn
   thread, no Ray, server VAD + pocketsphinx) whose delegate is a local `ScriptedChatServer` that answers in
   `--delegate-delay-s`: the first user turn with a call of `get_weather`, the tool's output with a
   sentence. A client streams the first sentence of the speech fixture on a microphone's schedule, then
   silence. Measured: the end of the user's turn (when the chunk holding the sentence's last sample was
   sent) → `response.function_call_arguments.done`; and sending `function_call_output` + `response.create`
   → the answer's first `response.output_audio.delta`. Each includes one delegate delay: the server's own
   share is measured − delay (nothing is subtracted here).
2. Ingress cost per ask, in this thread: `session.delegate_asks` → `request_body` → `DelegateClient.complete`
   (against a local scripted server answering at once) → `parse_reply` → `session.delegate_replied` →
   `events_to_send`, timed with `time.thread_time` (CPU of the calling thread: the chat server's own thread
   is not counted), split into the session core, the wire mapping and the HTTP client. Beside it, the
   in-process server's event-loop thread CPU per session-second during the latency rounds.

`python -m serve_app.bench.delegate_bench [--rounds 5] [--delegate-delay-s 0.5] [--asks 200]
[--doc docs/BENCHMARKS.md]` writes delegate_bench.json and delegate_bench.md to `--out` and, with `--doc`,
the "Delegate (tools)" section of that file. `--smoke`: 1 round of the first mode, a few asks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.bench.engine_bench import git_commit, machine_info, run_and_save
from serve_app.client.cli import read_pcm16
from serve_app.config import AppConfig, ModelConfig, RealtimeLimits
from serve_app.constants import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from serve_app.delegate.client import DelegateClient
from serve_app.delegate.config import DelegateConfig, DelegateMode
from serve_app.delegate.messages import declared_functions, parse_reply, request_body
from serve_app.delegate.scripted_server import ScriptedChatServer, first_turn_tool, reply_tool_calls
from serve_app.engine.spec import ModelSpec
from serve_app.loadgen.audio import default_audio
from serve_app.protocol.dialect import Dialect
from serve_app.server.in_process import serve_in_process
from serve_app.session.session import RealtimeSession
from serve_app.session.settings import SessionSettings

SECTION = "## Delegate (tools)"
MODEL_ID = "moshi-sft"
ANSWER = "It is sunny in Paris today."
ARGUMENTS = {"city": "Paris"}
INSTRUCTIONS = "Answer weather questions."
TOOL = "get_weather"
WEATHER_TOOL = {
    "type": "function",
    "name": TOOL,
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ROUND_TIMEOUT_S = 60.0
PAUSE_S = 0.4
"""Silence that ends the fixture's first sentence (its sentences are 1.6 s apart, its words far closer)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_app.bench.delegate_bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory")
    parser.add_argument("--rounds", type=int, default=5, help="fresh sessions per mode")
    parser.add_argument(
        "--delegate-delay-s", type=float, default=0.5, help="how long each delegate answer takes"
    )
    parser.add_argument("--modes", nargs="+", choices=("delegate", "duplex"), default=["delegate", "duplex"])
    parser.add_argument("--asks", type=int, default=200, help="timed asks of the ingress-cost part")
    parser.add_argument(
        "--audio", type=Path, default=None, help="24 kHz mono PCM16 WAV (default: the fixture)"
    )
    parser.add_argument("--doc", type=Path, default=None, help="write the section into this Markdown file")
    parser.add_argument("--smoke", action="store_true", help="1 round of the first mode, 5 asks")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.asks, args.modes = 1, 5, args.modes[:1]
    if args.rounds < 1 or args.asks < 1 or args.delegate_delay_s < 0:
        parser.error("--rounds and --asks must be >= 1, --delegate-delay-s >= 0")
    return args


# The spoken turn ----------------------------------------------------------------------------------------


def first_sentence(pcm16: bytes) -> tuple[bytes, float]:
    """The audio up to the end of its first sentence (leading silence included), and that end in seconds:
    the last 10 ms window above 1 % of the loudest, before the first `PAUSE_S` of quiet after speech."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32)
    hop = SAMPLE_RATE // 100
    windows = samples[: len(samples) // hop * hop].reshape(-1, hop)
    loud = np.sqrt(np.mean(windows**2, axis=1)) > 0.01 * float(np.sqrt(np.mean(windows**2, axis=1)).max())
    speech = np.flatnonzero(loud)
    if len(speech) == 0:
        raise ValueError("the audio holds no speech")
    gaps = np.flatnonzero(np.diff(speech) > int(PAUSE_S * 100))
    end = int(speech[gaps[0]] if len(gaps) else speech[-1]) + 1
    return pcm16[: end * hop * 2], end * hop / SAMPLE_RATE


@dataclass
class Round:
    """Monotonic stamps of one session (None: never came)."""

    turn_end: float | None = None
    speech_stopped: float | None = None
    transcribed: float | None = None
    call_done: float | None = None
    output_sent: float | None = None
    answer_audio: float | None = None
    answer_transcript: str | None = None
    transcript: str | None = None
    loop_cpu_s: float = 0.0
    session_s: float = 0.0
    error: str | None = None

    def ms(self, start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None else round(1000 * (end - start), 1)

    def row(self) -> dict[str, Any]:
        return {
            "turn_end_to_call_done_ms": self.ms(self.turn_end, self.call_done),
            "output_to_first_audio_ms": self.ms(self.output_sent, self.answer_audio),
            "turn_end_to_speech_stopped_ms": self.ms(self.turn_end, self.speech_stopped),
            "turn_end_to_transcribed_ms": self.ms(self.turn_end, self.transcribed),
            "user_transcript": self.transcript,
            "answer_transcript": self.answer_transcript,
            "loop_cpu_ms_per_session_s": (
                round(1000 * self.loop_cpu_s / self.session_s, 2) if self.session_s else None
            ),
            "error": self.error,
        }


async def one_round(url: str, sentence: bytes, sentence_end_s: float, loop_cpu: Callable[[], float]) -> Round:
    import websockets

    result = Round()
    async with websockets.connect(url, max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created["type"] != "session.created":
            result.error = f"refused: {created}"
            return result
        update = {
            "type": "realtime",
            "instructions": INSTRUCTIONS,
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
            "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
        }
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        step = 2 * FRAME_SAMPLES
        last_chunk = (int(sentence_end_s * SAMPLE_RATE) * 2 - 1) // step  # holds the last speech sample

        async def microphone() -> None:
            """The sentence on a microphone's 80 ms schedule, then silence for as long as the round runs
            (Moshi steps only on input audio: it can say the answer only while audio flows)."""
            began = time.monotonic()
            index = 0
            while True:
                at = index * step
                chunk = sentence[at : at + step] if at < len(sentence) else bytes(step)
                await asyncio.sleep(max(0.0, began + index * FRAME_S - time.monotonic()))
                audio = base64.b64encode(chunk.ljust(step, b"\0")).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
                if index == last_chunk:
                    result.turn_end = time.monotonic()
                index += 1

        started, cpu_before = time.monotonic(), loop_cpu()
        sender = asyncio.create_task(microphone())
        call: dict[str, Any] | None = None
        answer_id: str | None = None
        try:
            async with asyncio.timeout(ROUND_TIMEOUT_S):
                while result.answer_transcript is None or result.answer_audio is None:
                    event = json.loads(await ws.recv())
                    kind, now = event["type"], time.monotonic()
                    if kind == "error":
                        raise RuntimeError(f"the session reported an error: {event['error']}")
                    if kind == "input_audio_buffer.speech_stopped" and result.speech_stopped is None:
                        result.speech_stopped = now
                    elif kind == "conversation.item.input_audio_transcription.completed":
                        result.transcribed = result.transcribed or now
                        result.transcript = result.transcript or event.get("transcript")
                    elif kind == "response.function_call_arguments.done" and call is None:
                        result.call_done = now
                        call = event
                    elif kind == "response.done" and call is not None and result.output_sent is None:
                        if event["response"]["id"] != call["response_id"]:
                            continue
                        output = {"type": "function_call_output", "call_id": call["call_id"]}
                        output["output"] = json.dumps({"city": "Paris", "sky": "sunny"})
                        result.output_sent = time.monotonic()
                        await ws.send(json.dumps({"type": "conversation.item.create", "item": output}))
                        answer = {"metadata": {"bench": "answer"}}
                        await ws.send(json.dumps({"type": "response.create", "response": answer}))
                    elif kind == "response.created" and event["response"].get("metadata") == {
                        "bench": "answer"
                    }:
                        answer_id = event["response"]["id"]
                    elif kind == "response.output_audio.delta" and event["response_id"] == answer_id:
                        result.answer_audio = result.answer_audio or now
                    elif (
                        kind == "response.output_audio_transcript.done" and event["response_id"] == answer_id
                    ):
                        result.answer_transcript = event["transcript"]
        except (TimeoutError, RuntimeError) as error:
            result.error = str(error) or f"no answer within {ROUND_TIMEOUT_S:g} s"
        finally:
            result.session_s, result.loop_cpu_s = time.monotonic() - started, loop_cpu() - cpu_before
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    if result.error is None and result.speech_stopped is None:
        result.error = "server VAD did not end the turn"
    return result


def app_config(mode: DelegateMode, delegate_url: str) -> AppConfig:
    # Client, server, engine and delegate share this process: only the slot count admits, and only 5 s of
    # lag ends a session (as tests/server does), so the numbers are the path's, not a refusal's.
    lenient = RealtimeLimits(admit_fraction=None, max_lag_ms=5000)
    delegate = DelegateConfig(base_url=delegate_url, model="scripted", api_key_env=None, mode=mode)
    model = ModelConfig(
        id=MODEL_ID, spec=ModelSpec(tiny_seed=1), slots=2, realtime=lenient, delegate=delegate
    )
    return AppConfig(models=(model,), server={"api_keys": (), "max_loop_lag_ms": None})


def latency(mode: DelegateMode, args: argparse.Namespace, sentence: bytes, end_s: float) -> dict[str, Any]:
    logic = first_turn_tool(TOOL, ARGUMENTS, text=ANSWER, delay_s=args.delegate_delay_s)
    with ScriptedChatServer(default=logic) as chat:
        config = app_config(mode, chat.base_url)
        with serve_in_process(config) as ingress:
            url = f"ws://{ingress.host}/v1/realtime?model={MODEL_ID}"
            rounds = []
            for index in range(args.rounds):
                done = asyncio.run(one_round(url, sentence, end_s, ingress.loop_cpu_s))
                rounds.append(done.row())
                print(f"{mode} round {index + 1}: {json.dumps(rounds[-1])}", flush=True)
    delegate = config.models[0].delegate
    assert delegate is not None
    return {
        "mode": mode,
        "floor_wait_ms": delegate.floor_wait_ms,
        "turn_detection": "server_vad (silence_duration_ms 500), pocketsphinx",
        "rounds": rounds,
        "failed": sum(r["error"] is not None for r in rounds),
        **{key: _p50_max(r[key] for r in rounds) for key in _LATENCIES},
    }


_LATENCIES = (
    "turn_end_to_call_done_ms",
    "output_to_first_audio_ms",
    "turn_end_to_speech_stopped_ms",
    "turn_end_to_transcribed_ms",
    "loop_cpu_ms_per_session_s",
)


def _p50_max(values: Any) -> dict[str, float | None]:
    kept = [v for v in values if v is not None]
    if not kept:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(kept), 1), "max": round(max(kept), 1)}


# The ingress's cost per ask -----------------------------------------------------------------------------


async def ask_cost(asks: int, warmup: int = 5) -> dict[str, Any]:
    """Thread CPU of one ask on the ingress: a response.create on a session with a tool and a user text
    item, answered by a tool call (so the response ends and the next ask can open one)."""
    with ScriptedChatServer(default=reply_tool_calls([(TOOL, ARGUMENTS)])) as chat:
        config = DelegateConfig(base_url=chat.base_url, model="scripted", api_key_env=None)
        client = DelegateClient(config)
        core: list[float] = []
        mapping: list[float] = []
        http: list[float] = []
        events = 0
        try:
            for index in range(warmup + asks):
                session = RealtimeSession(
                    session_id="sess_bench",
                    model_id=MODEL_ID,
                    dialect=Dialect.GA,
                    settings=SessionSettings(),
                    now_epoch_s=time.time(),
                    delegate=config,
                )
                session.connect()
                update = {"type": "realtime", "instructions": INSTRUCTIONS, "tools": [WEATHER_TOOL]}
                session.receive_client_text(json.dumps({"type": "session.update", "session": update}))
                question = {"type": "input_text", "text": "What is the weather in Paris?"}
                item = {"type": "message", "role": "user", "content": [question]}
                session.receive_client_text(json.dumps({"type": "conversation.item.create", "item": item}))
                session.events_to_send()
                create = json.dumps({"type": "response.create"})

                c0 = time.thread_time()
                session.receive_client_text(create)
                (ask,) = session.delegate_asks()
                c1 = time.thread_time()
                body = request_body(
                    model=config.model,
                    instructions=ask.instructions,
                    items=ask.items,
                    tools=ask.tools,
                    tool_choice=ask.tool_choice,
                    max_tokens=config.max_tokens,
                )
                c2 = time.thread_time()
                raw = await client.complete(body)
                c3 = time.thread_time()
                reply = parse_reply(raw, declared=declared_functions(ask.tools), tool_choice=ask.tool_choice)
                c4 = time.thread_time()
                session.delegate_replied(ask.ask_id, reply, time.monotonic())
                sent = session.events_to_send()
                c5 = time.thread_time()
                if not reply.calls or not any('"response.done"' in e.text for e in sent):
                    raise RuntimeError("the ask did not end in a function call and response.done")
                if index >= warmup:
                    core.append((c1 - c0) + (c5 - c4))
                    mapping.append((c2 - c1) + (c4 - c3))
                    http.append(c3 - c2)
                    events += len(sent)
        finally:
            await client.aclose()

    def us(values: list[float]) -> float:
        return round(1e6 * statistics.median(values), 1)

    totals = [a + b + c for a, b, c in zip(core, mapping, http, strict=True)]
    return {
        "asks": asks,
        "events_per_ask": round(events / asks, 1),
        "cpu_ms_per_ask_p50": round(1000 * statistics.median(totals), 3),
        "cpu_ms_per_ask_mean": round(1000 * statistics.fmean(totals), 3),
        "session_core_us_p50": us(core),
        "wire_mapping_us_p50": us(mapping),
        "http_client_us_p50": us(http),
    }


# The report -----------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    machine, cost = result["machine"], result["ask_cost"]
    delay_ms = round(1000 * result["delegate_delay_s"])
    lines = [
        SECTION,
        "",
        f"`{result['command']}` (commit `{result['commit']}`, {machine['nproc']}-core CPU "
        f"({machine['cpu_model']}), load average at start {machine['load_average_at_start'][0]:.2f}; the "
        "tiny embedded model, random weights). One process holds the client, the ingress (uvicorn thread, no "
        "Ray), the engine, server VAD, pocketsphinx and the delegate: a local scripted chat server that "
        f"answers every call in **{delay_ms} ms** (a call of `get_weather` for the first user turn, a "
        "sentence once the tool's output is in).",
        "",
        f"Latency, {result['rounds']} fresh session(s) per mode; the turn ends when the chunk holding the "
        f"last sample of the fixture's first sentence ({result['sentence_s']} s) is sent. Each measure "
        f"holds one delegate delay: the server's own share is the figure − {delay_ms} ms.",
        "",
        "| mode | turn end → `function_call_arguments.done` p50 / max | `function_call_output` + "
        "`response.create` → first `output_audio.delta` p50 / max | turn end → `speech_stopped` / "
        "`.completed` (p50) | ingress loop CPU per session-second | failed rounds |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["latency"]:

        def pm(key: str, row: dict[str, Any] = row) -> str:
            return f"{row[key]['p50']} / {row[key]['max']} ms"

        lines.append(
            f"| {row['mode']} (floor wait {row['floor_wait_ms']} ms) | {pm('turn_end_to_call_done_ms')} | "
            f"{pm('output_to_first_audio_ms')} | {row['turn_end_to_speech_stopped_ms']['p50']} / "
            f"{row['turn_end_to_transcribed_ms']['p50']} ms | "
            f"{row['loop_cpu_ms_per_session_s']['p50']} ms | {row['failed']} |"
        )
    lines += [
        "",
        f"Ingress cost of one ask ({cost['asks']} asks, thread CPU of the event loop's side: the session's "
        "`response.create` and `delegate_asks`, `request_body`, `DelegateClient.complete` against a local "
        "server answering at once, `parse_reply`, `delegate_replied` and `events_to_send`): "
        f"**{cost['cpu_ms_per_ask_p50']} ms CPU per ask** (p50; mean {cost['cpu_ms_per_ask_mean']} ms), of "
        f"which the session core {cost['session_core_us_p50']} µs, the wire mapping "
        f"{cost['wire_mapping_us_p50']} µs and the HTTP client {cost['http_client_us_p50']} µs; "
        f"{cost['events_per_ask']} server events per ask. A session asks once per user turn and once per "
        "tool output.",
    ]
    loop = [r["loop_cpu_ms_per_session_s"]["p50"] for r in result["latency"]]
    if loop and all(loop):
        ratios = ", ".join(
            f"{row['mode']}: {cost['cpu_ms_per_ask_p50'] / per_s:.3f}"
            for row, per_s in zip(result["latency"], loop, strict=True)
        )
        lines[-1] += (
            " Beside the ingress loop's CPU per session-second above (the whole session: audio, VAD "
            "hand-off, events and its two asks), one ask costs as much as this many session-seconds: "
            f"{ratios}."
        )
    return "\n".join(lines) + "\n"


def save_section(doc: Path, section: str) -> None:
    """Replace the file's "Delegate (tools)" section (up to the next `## `), or append it."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        doc.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + 1)
    rest = "" if end < 0 else "\n" + text[end + 1 :]
    doc.write_text(text[: start + 1] + section + rest)


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    sentence, end_s = first_sentence(read_pcm16(args.audio or default_audio()))
    print(
        f"first sentence ends at {end_s:.2f} s; delegate answers in {args.delegate_delay_s:g} s", flush=True
    )
    modes: list[DelegateMode] = list(args.modes)
    rows = [latency(mode, args, sentence, end_s) for mode in modes]
    cost = asyncio.run(ask_cost(args.asks, warmup=1 if args.smoke else 5))
    print(f"ingress cost per ask: {json.dumps(cost)}", flush=True)
    result = {
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "delegate_delay_s": args.delegate_delay_s,
        "rounds": args.rounds,
        "sentence_s": round(end_s, 2),
        "latency": rows,
        "ask_cost": cost,
    }
    section = markdown(result)
    print(section, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "delegate_bench.md").write_text(section)
    if args.doc is not None:
        save_section(args.doc, section)
        print(f"wrote the {SECTION[3:]!r} section of {args.doc}", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    run_and_save("delegate_bench", argv, parse_args, run)


if __name__ == "__main__":
    main()
