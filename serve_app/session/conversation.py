"""The conversation: an ordered list of items, each with an id that every event about it repeats.

Three kinds of item: what a client created (echoed as it sent it), user audio committed from the input
buffer, and Moshi's own utterances (AssistantItem), whose transcript is known frame by frame so it can
be truncated at the point the client stopped playing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from serve_app.constants import FRAME_MS, SAMPLE_RATE
from serve_app.protocol.codecs import float_to_pcm16
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.protocol.json_object import JsonObject

ROOT: Final = "root"
"""previous_item_id that places a client item first (beta semantics, harmless in GA)."""

_SAMPLES_PER_MS: Final = SAMPLE_RATE // 1000


@dataclass(eq=False)
class ClientItem:
    """An item from conversation.item.create, kept in the client's own (validated) shape."""

    id: str
    wire: JsonObject

    @property
    def role(self) -> str | None:
        role = self.wire.get("role")
        return role if isinstance(role, str) else None

    def to_wire(self, dialect: Dialect, *, audio: str | None = None) -> JsonObject:
        """The echo; leaves out audio the client sent (it has it, and it can be large). `wire` has it all."""
        del dialect, audio  # stored in the session's dialect already
        content = [
            {key: value for key, value in part.items() if key != "audio"}
            for part in self.wire.get("content") or []
        ]
        return {**self.wire, "content": content} if "content" in self.wire else self.wire

    @classmethod
    def from_client(cls, item_id: str, item: JsonObject) -> ClientItem:
        """Complete the client's item the way strict clients expect every item to look."""
        wire: JsonObject = {
            "id": item_id,
            "object": "realtime.item",
            **item,
            "status": item.get("status") or "completed",
        }
        wire["id"] = item_id
        kind = wire.get("type")
        if kind is None:
            raise ClientError(
                "invalid_event", param="item.type", detail="Missing required parameter: 'item.type'."
            )
        if kind == "message":
            if wire.get("role") is None:
                raise ClientError(
                    "invalid_event", param="item.role", detail="Missing required parameter: 'item.role'."
                )
            wire["content"] = [_complete_part(part) for part in wire.get("content") or []]
        elif kind == "function_call":
            wire.setdefault("call_id", f"call_{item_id}")
            wire.setdefault("arguments", "")
        return cls(id=item_id, wire=wire)

    @property
    def retained_samples(self) -> int:
        return 0

    def drop_audio(self) -> None:
        pass


def _complete_part(part: JsonObject) -> JsonObject:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"text": "", **part}
    if kind in ("input_audio", "output_audio", "audio"):
        return {"transcript": None, **part}
    return part


@dataclass(eq=False)
class UserAudioItem:
    """Committed input audio (24 kHz PCM16 as Moshi heard it); transcript comes later, if ever."""

    id: str
    pcm: npt.NDArray[np.int16] | None
    duration_ms: float
    transcript: str | None = None
    role: str = "user"

    def to_wire(self, dialect: Dialect, *, audio: str | None = None) -> JsonObject:
        del dialect
        part: JsonObject = {"type": "input_audio", "transcript": self.transcript}
        if audio is not None:
            part["audio"] = audio
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [part],
        }

    @property
    def retained_samples(self) -> int:
        return 0 if self.pcm is None else len(self.pcm)

    def drop_audio(self) -> None:
        self.pcm = None


@dataclass(eq=False)
class AssistantItem:
    """One Moshi utterance as an assistant message with a single audio (or text) content part."""

    id: str
    audio_output: bool
    """False in text-only sessions: the part is `output_text` and no audio is sent or kept."""
    status: str = "in_progress"
    frames: int = 0
    pieces: list[tuple[int, str]] = field(default_factory=list)
    """(frame index, text piece as sent): the transcript with its timing."""
    truncated_ms: int | None = None
    _chunks: list[npt.NDArray[np.int16]] | None = field(default_factory=list)
    role: str = "assistant"

    def add_frame(self, pcm: npt.NDArray[np.float32], text: str | None) -> None:
        if text:
            self.pieces.append((self.frames, text))
        if self.audio_output and self._chunks is not None:
            self._chunks.append(float_to_pcm16(pcm))
        self.frames += 1

    @property
    def transcript(self) -> str:
        return "".join(text for _, text in self.pieces)

    @property
    def audio_ms(self) -> int:
        full = self.frames * FRAME_MS
        return full if self.truncated_ms is None else min(full, self.truncated_ms)

    @property
    def pcm(self) -> npt.NDArray[np.int16] | None:
        if self._chunks is None:
            return None
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return pcm[: self.audio_ms * _SAMPLES_PER_MS]

    def truncate(self, audio_end_ms: int) -> None:
        """Forget what the client never played: audio after audio_end_ms and the text spoken there."""
        kept_frames = math.ceil(audio_end_ms / FRAME_MS)  # frames that started before audio_end_ms
        self.pieces = [(index, text) for index, text in self.pieces if index < kept_frames]
        self.truncated_ms = audio_end_ms
        if self._chunks:
            self._chunks = [np.concatenate(self._chunks)[: audio_end_ms * _SAMPLES_PER_MS]]

    def part(self, dialect: Dialect, *, audio: str | None = None) -> JsonObject:
        """The item's content part (`output_audio`/`output_text`; beta says `audio`/`text`)."""
        if self.audio_output:
            part: JsonObject = {"type": "output_audio" if dialect is Dialect.GA else "audio"}
            part["transcript"] = self.transcript
            if audio is not None:
                part["audio"] = audio
            return part
        return {"type": "output_text" if dialect is Dialect.GA else "text", "text": self.transcript}

    def to_wire(self, dialect: Dialect, *, audio: str | None = None) -> JsonObject:
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": self.status,
            "content": [self.part(dialect, audio=audio)],
        }

    @property
    def retained_samples(self) -> int:
        return 0 if self._chunks is None else sum(len(chunk) for chunk in self._chunks)

    def drop_audio(self) -> None:
        self._chunks = None


Item = ClientItem | UserAudioItem | AssistantItem


class Conversation:
    """Ordered items plus a budget of retained audio (for conversation.item.retrieve)."""

    def __init__(self, conversation_id: str, *, retained_audio_ms: int) -> None:
        self.id = conversation_id
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        self._audio_budget = retained_audio_ms * _SAMPLES_PER_MS

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self._items]

    @property
    def last_id(self) -> str | None:
        return self._items[-1].id if self._items else None

    def wire_items(self, dialect: Dialect) -> list[JsonObject]:
        """Every item as the client sees it (no audio), oldest first."""
        return [item.to_wire(dialect) for item in self._items]

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after previous_item_id (None: at the end; "root": first); returns the actual previous id."""
        if item.id in self._by_id:
            raise ClientError("item_already_exists", param="item.id", item_id=item.id)
        if previous_item_id is None:
            position = len(self._items)
        elif previous_item_id == ROOT:
            position = 0
        elif previous_item_id in self._by_id:
            position = self._items.index(self._by_id[previous_item_id]) + 1
        else:
            raise ClientError("item_not_found", param="previous_item_id", item_id=previous_item_id)
        self._items.insert(position, item)
        self._by_id[item.id] = item
        self._enforce_audio_budget()
        return self._items[position - 1].id if position else None

    def get(self, item_id: str, *, param: str = "item_id") -> Item:
        item = self._by_id.get(item_id)
        if item is None:
            raise ClientError("item_not_found", param=param, item_id=item_id)
        return item

    def previous_id(self, item_id: str) -> str | None:
        position = self._items.index(self._by_id[item_id])
        return self._items[position - 1].id if position else None

    def delete(self, item_id: str) -> None:
        item = self.get(item_id)
        self._items.remove(item)
        del self._by_id[item_id]

    def trim(self, max_items: int, *, keep: object = None) -> list[str]:
        """Delete the oldest items beyond `max_items` (never `keep`); returns their ids, oldest first."""
        removed: list[str] = []
        for item in list(self._items):
            if len(self._items) <= max_items:
                break
            if item is not keep:
                self.delete(item.id)
                removed.append(item.id)
        return removed

    def audio_added(self) -> None:
        """Call after an item gained audio; the oldest items lose theirs first when over budget."""
        self._enforce_audio_budget()

    def _enforce_audio_budget(self) -> None:
        total = sum(item.retained_samples for item in self._items)
        for item in self._items:
            if total <= self._audio_budget:
                break
            total -= item.retained_samples
            item.drop_audio()
