from __future__ import annotations

import numpy as np
import pytest

from serve_app.constants import FRAME_SAMPLES
from serve_app.protocol.dialect import Dialect
from serve_app.protocol.errors import ClientError
from serve_app.session.conversation import AssistantItem, ClientItem, Conversation, UserAudioItem


def user(item_id: str, seconds: float = 0.0) -> UserAudioItem:
    return UserAudioItem(id=item_id, pcm=np.zeros(int(seconds * 24000), np.int16), duration_ms=seconds * 1000)


def test_add_returns_the_previous_item_id() -> None:
    conversation = Conversation("conv_1", retained_audio_ms=0)
    assert conversation.add(user("a")) is None
    assert conversation.add(user("b")) == "a"
    assert conversation.add(user("m"), "a") == "a"
    assert conversation.add(user("r"), "root") is None
    assert conversation.ids == ["r", "a", "m", "b"]
    assert conversation.previous_id("b") == "m" and conversation.last_id == "b"
    conversation.delete("m")
    assert conversation.previous_id("b") == "a" and "m" not in conversation and len(conversation) == 3


def test_errors_name_the_item() -> None:
    conversation = Conversation("conv_1", retained_audio_ms=0)
    conversation.add(user("a"))
    with pytest.raises(ClientError) as caught:
        conversation.add(user("a"))
    assert caught.value.code == "item_already_exists"
    with pytest.raises(ClientError) as caught:
        conversation.add(user("b"), "zzz")
    assert (caught.value.code, caught.value.param) == ("item_not_found", "previous_item_id")
    with pytest.raises(ClientError) as caught:
        conversation.get("zzz")
    assert caught.value.code == "item_not_found" and "zzz" in caught.value.message


def test_oldest_items_lose_their_audio_beyond_the_budget() -> None:
    conversation = Conversation("conv_1", retained_audio_ms=1500)
    first, second = user("a", 1.0), user("b", 1.0)
    conversation.add(first)
    conversation.add(second)
    assert first.pcm is None and second.pcm is not None


def test_assistant_item_truncation_follows_frame_timing() -> None:
    item = AssistantItem(id="item_1", audio_output=True)
    for text in ("Hi", None, " there", " you"):
        item.add_frame(np.full(FRAME_SAMPLES, 0.5, np.float32), text)
    assert item.transcript == "Hi there you" and item.audio_ms == 320
    item.truncate(161)  # frame 2 (160-240 ms) started playing
    assert item.transcript == "Hi there" and item.audio_ms == 161
    assert item.pcm is not None and len(item.pcm) == 161 * 24
    item.truncate(160)
    assert item.transcript == "Hi"


def test_wire_shapes_per_dialect() -> None:
    item = AssistantItem(id="item_1", audio_output=True, status="completed")
    item.add_frame(np.zeros(FRAME_SAMPLES, np.float32), "ok")
    assert item.to_wire(Dialect.GA)["content"] == [{"type": "output_audio", "transcript": "ok"}]
    assert item.to_wire(Dialect.BETA)["content"] == [{"type": "audio", "transcript": "ok"}]
    text = AssistantItem(id="item_2", audio_output=False)
    text.add_frame(np.zeros(FRAME_SAMPLES, np.float32), "ok")
    assert text.pcm is None or len(text.pcm) == 0
    assert text.to_wire(Dialect.BETA)["content"] == [{"type": "text", "text": "ok"}]


def test_client_items_are_completed_for_strict_clients() -> None:
    given = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text"}, {"type": "input_audio", "audio": "AAAA"}],
    }
    item = ClientItem.from_client("item_9", given)
    assert item.wire["status"] == "completed" and item.wire["object"] == "realtime.item"
    assert item.wire["content"] == [
        {"type": "input_text", "text": ""},
        {"type": "input_audio", "transcript": None, "audio": "AAAA"},
    ]
    assert item.to_wire(Dialect.GA)["content"][1] == {
        "type": "input_audio",
        "transcript": None,
    }  # echo without audio
    call = ClientItem.from_client("item_8", {"type": "function_call", "name": "f"})
    assert call.wire["call_id"] == "call_item_8" and call.wire["arguments"] == ""
    with pytest.raises(ClientError, match=r"item\.role"):
        ClientItem.from_client("x", {"type": "message", "content": []})
    with pytest.raises(ClientError, match=r"item\.type"):
        ClientItem.from_client("x", {"role": "user"})
