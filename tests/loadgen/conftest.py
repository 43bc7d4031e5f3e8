"""The in-process server of tests/server, for the load generator's end-to-end tests."""

from tests.server.conftest import local_server  # noqa: F401
