"""Fuzzing the session core: 10,000+ malformed, truncated, oversized, wrongly-typed and out-of-order client
events of both dialects. Each gets exactly one `error` that strictly validates against the `openai` type
(the harness checks every event), nothing raises, and the session stays open and usable.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.protocol.dialect import Dialect
from tests.fuzz_events import expected_event_id, malformed

from .conftest import FAST
from .harness import Harness, only_error

EVENTS_PER_EXAMPLE = 50
EXAMPLES = 210  # × 50 events, over both dialects: 10,500
OVERSIZE_LIMIT = 2048
SETTINGS = FAST.model_copy(update={"max_message_bytes": OVERSIZE_LIMIT})


sent = 0


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    dialect=st.sampled_from([Dialect.GA, Dialect.BETA]),
    events=st.lists(malformed(OVERSIZE_LIMIT), min_size=EVENTS_PER_EXAMPLE, max_size=EVENTS_PER_EXAMPLE),
)
def test_every_malformed_event_gets_one_valid_error_and_the_session_goes_on(
    dialect: Dialect, events: list[str | bytes]
) -> None:
    global sent
    h = Harness(dialect, SETTINGS)
    for event in events:
        error = only_error(h.send(event))  # exactly one, strict-validated against the SDK type
        assert error["code"] and error["message"]
        if (eid := expected_event_id(event, OVERSIZE_LIMIT)) is not None:
            assert error["event_id"] == eid
        assert not h.session.closed
        sent += 1
    assert h.append(480) == []  # still usable: audio goes to Moshi
    assert len(h.session.audio_for_engine()) == 1


def test_the_fuzzing_threw_ten_thousand_events() -> None:
    # Runs after the property test (file order): hypothesis ran every example.
    assert sent >= 10_000, sent
