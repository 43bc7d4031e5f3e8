from __future__ import annotations

from openai.types import realtime as ga
from openai.types.beta import realtime as beta

from serve_app.protocol.sdk_types import classes_by_type, literal_values, union_members


def test_event_tables_follow_the_sdk_unions() -> None:
    assert len(classes_by_type(ga.RealtimeClientEvent)) == 11
    assert classes_by_type(ga.RealtimeClientEvent)["session.update"] is ga.SessionUpdateEvent
    assert "transcription_session.update" in classes_by_type(beta.RealtimeClientEvent)
    assert (
        classes_by_type(ga.RealtimeServerEvent)["response.output_audio.delta"] is ga.ResponseAudioDeltaEvent
    )
    assert classes_by_type(beta.RealtimeServerEvent)["response.audio.delta"] is beta.ResponseAudioDeltaEvent


def test_union_and_literal_reading() -> None:
    item = ga.ConversationItemCreateEvent.model_fields["item"].annotation
    members = union_members(item)
    assert ga.RealtimeConversationItemUserMessage in members and len(members) >= 5
    assert literal_values(ga.RealtimeConversationItemUserMessage, "role") == ("user",)
    assert literal_values(ga.RealtimeConversationItemUserMessage, "nope") == ()
    assert union_members(int) == []
