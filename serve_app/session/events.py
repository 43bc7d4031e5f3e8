"""The client events a session handles, as the `openai` SDK types them in each dialect.

`parse_client_event` validates a message into its dialect's SDK class; each handler takes the union of
the GA and beta classes of its event, and `route` ties a handler to exactly those classes (mypy checks
that they match the handler's annotation), so the dispatch table stays typed end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from openai.types import realtime as ga
from openai.types.beta import realtime as beta
from openai.types.beta.realtime.realtime_client_event import OutputAudioBufferClear as BetaOutputAudioClear
from pydantic import BaseModel

from serve_app.protocol.sdk_types import literal_values

# Per event: the union a handler takes, and the (GA, beta) classes `route` checks it against.
SessionUpdate = ga.SessionUpdateEvent | beta.SessionUpdateEvent
SESSION_UPDATE = (ga.SessionUpdateEvent, beta.SessionUpdateEvent)
TranscriptionSessionUpdate = beta.TranscriptionSessionUpdate
TRANSCRIPTION_SESSION_UPDATE = (beta.TranscriptionSessionUpdate,) * 2
"""Beta only (GA says session.type "transcription"); refused either way."""
Append = ga.InputAudioBufferAppendEvent | beta.InputAudioBufferAppendEvent
APPEND = (ga.InputAudioBufferAppendEvent, beta.InputAudioBufferAppendEvent)
Commit = ga.InputAudioBufferCommitEvent | beta.InputAudioBufferCommitEvent
COMMIT = (ga.InputAudioBufferCommitEvent, beta.InputAudioBufferCommitEvent)
Clear = ga.InputAudioBufferClearEvent | beta.InputAudioBufferClearEvent
CLEAR = (ga.InputAudioBufferClearEvent, beta.InputAudioBufferClearEvent)
ItemCreate = ga.ConversationItemCreateEvent | beta.ConversationItemCreateEvent
ITEM_CREATE = (ga.ConversationItemCreateEvent, beta.ConversationItemCreateEvent)
ItemRetrieve = ga.ConversationItemRetrieveEvent | beta.ConversationItemRetrieveEvent
ITEM_RETRIEVE = (ga.ConversationItemRetrieveEvent, beta.ConversationItemRetrieveEvent)
ItemDelete = ga.ConversationItemDeleteEvent | beta.ConversationItemDeleteEvent
ITEM_DELETE = (ga.ConversationItemDeleteEvent, beta.ConversationItemDeleteEvent)
ItemTruncate = ga.ConversationItemTruncateEvent | beta.ConversationItemTruncateEvent
ITEM_TRUNCATE = (ga.ConversationItemTruncateEvent, beta.ConversationItemTruncateEvent)
ResponseCreate = ga.ResponseCreateEvent | beta.ResponseCreateEvent
RESPONSE_CREATE = (ga.ResponseCreateEvent, beta.ResponseCreateEvent)
ResponseCancel = ga.ResponseCancelEvent | beta.ResponseCancelEvent
RESPONSE_CANCEL = (ga.ResponseCancelEvent, beta.ResponseCancelEvent)
OutputAudioClear = ga.OutputAudioBufferClearEvent | BetaOutputAudioClear
OUTPUT_AUDIO_CLEAR = (ga.OutputAudioBufferClearEvent, BetaOutputAudioClear)

Handler = Callable[[BaseModel], None]
G = TypeVar("G", bound=BaseModel)
B = TypeVar("B", bound=BaseModel)


def route(handler: Callable[[G | B], None], ga_type: type[G], beta_type: type[B]) -> tuple[str, Handler]:
    """(event type name, a handler of any parsed event of that name) for the dispatch table."""
    (name,) = set(literal_values(ga_type, "type")) | set(literal_values(beta_type, "type"))

    def handle(event: BaseModel) -> None:
        if not isinstance(event, (ga_type, beta_type)):
            raise TypeError(f"{name} handler got a {type(event).__name__}")  # a parser bug, not the client's
        handler(event)

    return str(name), handle
