"""Server-side knobs of a realtime session (from the app config), as opposed to what a client may set."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.constants import FRAME_MS


class SessionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    utterance_silence_ms: int = Field(default=800, ge=FRAME_MS)
    """Consecutive non-speaking time that ends an assistant utterance (and so its response)."""

    response_wait_ms: int = Field(default=4000, ge=FRAME_MS)
    """How long a client `response.create` waits for Moshi to start speaking before it ends empty;
    counted in input frames and in wall time (advance_clock), whichever runs out first."""

    max_utterance_ms: int = Field(default=30_000, ge=FRAME_MS)
    """Longest single response; a longer monologue continues in a new response."""

    response_stall_ms: int = Field(default=3000, ge=FRAME_MS)
    """Wall time without any engine frame after which a speaking response is closed (status incomplete):
    Moshi steps only on input audio, so a client that stops sending audio would otherwise leave it open."""

    min_commit_ms: int = Field(default=100, ge=0)
    """The hosted service refuses to commit less than 100 ms of input audio."""

    max_input_buffer_ms: int = Field(default=120_000, ge=FRAME_MS)
    """Uncommitted input audio kept for a later commit (Moshi hears all of it regardless); a client that
    streams without committing would otherwise grow it forever. 2 min of PCM16 is 5.8 MB."""

    max_input_backlog_ms: int = Field(default=60_000, ge=FRAME_MS)
    """Input audio forwarded to Moshi but not yet stepped. Moshi consumes 80 ms of input per 80 ms, so a
    client sending faster than real time builds a backlog; past this, appends are refused with
    `input_audio_backlog_full` rather than queued without bound (60 s of float32 at 24 kHz is 5.8 MB)."""

    max_append_rate: float | None = Field(default=4.0, ge=1.0)
    """Input audio a client may append, as a multiple of real time (None: no limit), after a burst of
    `append_burst_ms`. Judged on the encoded size before decoding, so a flooding client costs no decode
    work; a refused append is answered with `input_audio_rate_exceeded` and dropped. Real-time streaming
    (1×) and a recording sent at once (within the burst) both pass."""

    append_burst_ms: int = Field(default=60_000, ge=FRAME_MS)
    """How much audio may be appended at once beyond the rate (matches the input backlog bound)."""

    retained_audio_ms: int = Field(default=120_000, ge=0)
    """Audio kept on items for `conversation.item.retrieve`; the oldest items lose theirs first."""

    default_voice: str = "alloy"
    """Echoed as the session voice; stock Moshi has one voice of its own whatever is asked (a PersonaPlex
    model's sessions start with its own configured default voice instead: persona.py)."""

    default_instructions: str = ""

    default_turn_detection: Literal["server_vad", "semantic_vad"] | None = "server_vad"

    default_interrupt_response: bool = True
    """A new session's `turn_detection.interrupt_response` (the hosted service's default: on). When on, the
    user starting to speak cancels the response Moshi is streaming; a talker who pauses and resumes often
    can so cut every reply short. Full-duplex deployments that want Moshi heard over the user set it off
    (clients can still turn it on per session)."""

    max_session_s: int = Field(default=3600, ge=1)
    """A session ends with `session_expired` this long after it opened (reported as session.expires_at)."""

    idle_timeout_s: int | None = Field(default=300, ge=1)
    """A session whose client sent nothing for this long ends with `idle_timeout` (None: never). A
    full-duplex client streams audio all the time; silence this long is a client that is gone."""

    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest client message accepted (8 MiB ≈ 87 s of base64 PCM16); a larger one is answered with
    `message_too_large` and dropped, and the socket stays open. (The WebSocket layer itself closes with
    1009 above 16 MiB.)"""

    max_items: int = Field(default=500, ge=2)
    """Conversation items kept; past it the oldest are deleted (with `conversation.item.deleted`), so a
    long session's conversation stays bounded (Moshi's own context is its 4-minute KV window anyway)."""
