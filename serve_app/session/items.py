"""The conversation as the client edits and reads it: conversation.item.create / retrieve / delete /
truncate, the announcement of every new item, and trimming to a size.

The items themselves (client items, committed user audio, Moshi's utterances) and their order live in
conversation.py; what a response does to its own item lives in response.py.
"""

from __future__ import annotations

from collections.abc import Callable

from serve_app.protocol.audio_stream import AudioEncoder
from serve_app.protocol.codecs import AudioError, AudioFormat, decode_base64, pcm16_to_float
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.protocol.ids import new_item_id
from serve_app.protocol.json_object import JsonObject
from serve_app.session.config import SessionConfig
from serve_app.session.conversation import AssistantItem, ClientItem, Conversation, Item, UserAudioItem
from serve_app.session.events import ItemCreate, ItemTruncate


class Items:
    def __init__(
        self,
        *,
        dialect: Dialect,
        conversation: Conversation,
        emit: Callable[[JsonObject], None],
        added: Callable[[], None],
    ) -> None:
        self._dialect = dialect
        self._conversation = conversation
        self._emit = emit
        self._added = added
        """Called after each announced item (the session trims the conversation)."""

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert (see Conversation.add) without telling the client yet; returns the actual previous id."""
        return self._conversation.add(item, previous_item_id)

    def announce(self, item: Item, previous_id: str | None) -> None:
        wire = item.to_wire(self._dialect)
        if self._dialect is Dialect.GA:
            self._emit({"type": "conversation.item.added", "previous_item_id": previous_id, "item": wire})
            self._emit({"type": "conversation.item.done", "previous_item_id": previous_id, "item": wire})
        else:
            self._emit({"type": "conversation.item.created", "previous_item_id": previous_id, "item": wire})
        self._added()

    def get(self, item_id: str) -> Item:
        return self._conversation.get(item_id)

    def user_item(self, item_id: str) -> UserAudioItem | None:
        """The committed user audio item `item_id`, None if it is gone (deleted, trimmed) or never was."""
        item = self._conversation.get(item_id) if item_id in self._conversation else None
        return item if isinstance(item, UserAudioItem) else None

    # Client events ---------------------------------------------------------------------------------

    def create(self, event: ItemCreate) -> ClientItem:
        given: JsonObject = event.item.model_dump(mode="json", exclude_unset=True)
        for index, part in enumerate(given.get("content") or []):
            if isinstance(part.get("audio"), str):
                try:
                    decode_base64(part["audio"])
                except AudioError as exc:
                    raise ClientError(
                        "invalid_audio", param=f"item.content[{index}].audio", detail=str(exc)
                    ) from None
        item = ClientItem.from_client(given.get("id") or new_item_id(), given)
        self.announce(item, self.add(item, event.previous_item_id))
        return item

    def retrieve(self, item_id: str, config: SessionConfig) -> None:
        """conversation.item.retrieved: the item with its audio, in the session's wire formats."""
        item = self._conversation.get(item_id)
        input_format, output_format = config.input_format, config.output_format
        self._emit(
            {
                "type": "conversation.item.retrieved",
                "item": _with_audio(item, self._dialect, input_format, output_format),
            }
        )

    def delete(self, item: Item) -> None:
        self._conversation.delete(item.id)
        self._emit({"type": "conversation.item.deleted", "item_id": item.id})

    def truncate(self, event: ItemTruncate) -> AssistantItem:
        """Forget what the client never played of Moshi's item; conversation.item.truncated is left to
        `truncated`, after whatever stopping the item's response emits."""
        item = self._conversation.get(event.item_id)
        if not isinstance(item, AssistantItem) or not item.audio_output:
            raise ClientError("unsupported_content_type", param="item_id")
        if event.content_index != 0:
            raise ClientError(
                "content_index_out_of_range",
                param="content_index",
                item_id=item.id,
                content_index=event.content_index,
            )
        if not 0 <= event.audio_end_ms <= item.audio_ms:
            raise ClientError(
                "audio_end_ms_out_of_range",
                param="audio_end_ms",
                duration_ms=item.audio_ms,
                audio_end_ms=event.audio_end_ms,
            )
        item.truncate(event.audio_end_ms)
        return item

    def truncated(self, event: ItemTruncate) -> None:
        self._emit(
            {
                "type": "conversation.item.truncated",
                "item_id": event.item_id,
                "content_index": event.content_index,
                "audio_end_ms": event.audio_end_ms,
            }
        )

    def trim(self, max_items: int, *, keep: object) -> None:
        """Keep at most `max_items`: the oldest go first, never `keep`."""
        for item_id in self._conversation.trim(max_items, keep=keep):
            self._emit({"type": "conversation.item.deleted", "item_id": item_id})


def _with_audio(
    item: Item, dialect: Dialect, input_format: AudioFormat, output_format: AudioFormat
) -> JsonObject:
    if isinstance(item, ClientItem):
        return item.wire
    pcm = item.pcm
    if pcm is None or len(pcm) == 0 or (isinstance(item, AssistantItem) and not item.audio_output):
        return item.to_wire(dialect)
    audio_format = input_format if isinstance(item, UserAudioItem) else output_format
    return item.to_wire(dialect, audio=AudioEncoder(audio_format).encode(pcm16_to_float(pcm)))
