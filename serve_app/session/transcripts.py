"""Transcripts of the user's turns: what an ASR (batch or streaming) reports back about committed user
audio, told to the client as conversation.item.input_audio_transcription.* events.

A streaming ASR may send text for a turn server VAD still hears (its item id came with speech_started,
before the commit); anything for an item that is gone (deleted, trimmed) is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from serve_app.session.conversation import UserAudioItem
from serve_app.session.items import Items

logger = logging.getLogger(__name__)


class Transcripts:
    def __init__(
        self,
        *,
        items: Items,
        open_speech: Callable[[], tuple[str, int] | None],
        emit: Callable[[dict[str, Any]], None],
        log: dict[str, str],
    ) -> None:
        self._items = items
        self._open_speech = open_speech
        """(item id, audio_start_ms) of the turn server VAD hears now (see InputAudio.open_speech)."""
        self._emit = emit
        self._log = log

    def delta(self, item_id: str, delta: str) -> None:
        """A streaming ASR's next text for a user turn: committed, or still being spoken."""
        speech = self._open_speech()
        speaking = speech is not None and speech[0] == item_id
        if not delta or (not speaking and self._user_item(item_id) is None):
            return
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item_id,
                "content_index": 0,
                "delta": delta,
            }
        )

    def completed(self, item_id: str, transcript: str, *, streamed: bool) -> None:
        """Sets the item's transcript and tells the client (in one delta first, unless a streaming ASR
        `streamed` it already)."""
        item = self._user_item(item_id)
        if item is None:
            return
        item.transcript = transcript
        where = {"item_id": item_id, "content_index": 0}
        if not streamed:
            self._emit(
                {"type": "conversation.item.input_audio_transcription.delta", **where, "delta": transcript}
            )
        usage = {"type": "duration", "seconds": round(item.duration_ms / 1000, 3)}
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                **where,
                "transcript": transcript,
                "usage": usage,
            }
        )

    def failed(self, item_id: str, message: str) -> None:
        if self._user_item(item_id) is None:
            return
        error = {"type": "server_error", "code": "transcription_failed", "message": message, "param": None}
        self._emit(
            {
                "type": "conversation.item.input_audio_transcription.failed",
                "item_id": item_id,
                "content_index": 0,
                "error": error,
            }
        )

    def _user_item(self, item_id: str) -> UserAudioItem | None:
        item = self._items.user_item(item_id)
        if item is None:
            logger.info("transcript for an item that is gone", extra={**self._log, "item_id": item_id})
        return item
