from __future__ import annotations

import pytest

from serve_app.protocol.dialect import Dialect
from serve_app.session.settings import SessionSettings

from .harness import Harness

FAST = SessionSettings(
    utterance_silence_ms=240,  # 3 frames
    response_wait_ms=400,  # 5 frames
    max_utterance_ms=800,  # 10 frames
    response_stall_ms=1000,
)


@pytest.fixture(params=[Dialect.GA, Dialect.BETA], ids=["ga", "beta"])
def dialect(request: pytest.FixtureRequest) -> Dialect:
    value: Dialect = request.param
    return value


@pytest.fixture
def h(dialect: Dialect) -> Harness:
    """A connected session (session.created already drained) with short, frame-countable timings."""
    return Harness(dialect, FAST)
