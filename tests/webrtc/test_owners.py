"""Call ids name the ingress replica that holds the call; what a client sends is parsed, never trusted."""

from __future__ import annotations

import uuid

from serve_app.webrtc.owners import CALL_ID_RANDOM_HEX, new_call_id, owner_of


def test_the_owner_is_what_precedes_the_random_tail() -> None:
    tail = uuid.uuid4().hex[:CALL_ID_RANDOM_HEX]
    assert owner_of(new_call_id("ab12cd34", tail)) == "ab12cd34"
    assert owner_of(new_call_id("", tail)) == ""  # in-process: no owner, always local


def test_what_is_no_call_id_of_ours_names_no_owner() -> None:
    tail = uuid.uuid4().hex[:CALL_ID_RANDOM_HEX]
    for call_id in (
        "rtc_nosuchcall",  # too short for a tail
        f"call_x{tail}",  # not rtc_
        f"rtc_10.0.0.1:80{tail}",  # an address is no owner name
        f"rtc_{'a' * 65}{tail}",
    ):
        assert owner_of(call_id) is None, call_id
