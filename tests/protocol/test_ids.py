from __future__ import annotations

from serve_app.protocol.ids import new_conversation_id, new_event_id, new_item_id, new_response_id


def test_ids_have_the_hosted_prefixes_and_do_not_repeat() -> None:
    for mint, prefix in (
        (new_event_id, "event_"),
        (new_item_id, "item_"),
        (new_response_id, "resp_"),
        (new_conversation_id, "conv_"),
    ):
        ids = {mint() for _ in range(1000)}
        assert len(ids) == 1000
        assert all(i.startswith(prefix) and len(i) == len(prefix) + 20 for i in ids)
