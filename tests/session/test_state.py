from __future__ import annotations

import pytest

from serve_app.session.state import ResponseState, SessionState, StateError, require


def test_require_names_the_expected_state() -> None:
    require("x", SessionState.OPEN, SessionState.OPEN)
    with pytest.raises(StateError, match=r"^send: expected state 'open', but it is 'closed'\.$"):
        require("send", SessionState.CLOSED, SessionState.OPEN)
    with pytest.raises(StateError, match="expected state 'waiting' or 'streaming', but it is 'done'"):
        require("finish", ResponseState.DONE, ResponseState.WAITING, ResponseState.STREAMING)
