"""Load generator for any `/v1/realtime` deployment: N paced sessions of real speech, measured per session.

`moshi-realtime-load --url ws://host:8000/v1/realtime --sessions 8` (or `python -m serve_app.loadgen`);
`--find-max` searches for the largest N served in real time. The statistics (`stats`) are pure functions
over the timestamps a session driver records, so they are tested without a server.
"""

from serve_app.loadgen.criteria import Criteria
from serve_app.loadgen.runner import LoadConfig, LoadRun, run_load

__all__ = ["Criteria", "LoadConfig", "LoadRun", "run_load"]
