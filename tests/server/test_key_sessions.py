"""KeySessions: concurrent sessions per API key."""

from __future__ import annotations

from serve_app.server.key_sessions import KeySessions


def test_a_key_holds_at_most_its_limit_and_frees_it_on_exit() -> None:
    limits = KeySessions(2)
    with limits.hold("k") as one, limits.hold("k") as two:
        with limits.hold("k") as three:
            assert (one, two, three) == (True, True, False)
        with limits.hold("other") as other:
            assert other and limits.count("other") == 1
        assert limits.count("k") == 2
    assert limits.count("k") == 0
    with limits.hold("k") as again:
        assert again


def test_no_key_or_no_limit_always_admits() -> None:
    with KeySessions(1).hold(None) as allowed:
        assert allowed
    unlimited = KeySessions(None)
    with unlimited.hold("k") as a, unlimited.hold("k") as b:
        assert a and b and unlimited.count("k") == 0
