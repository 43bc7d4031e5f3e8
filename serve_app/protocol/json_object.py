"""`JsonObject`: one JSON object of the wire, as parsed from a client event or built for a server event.

Its one home: the protocol layer's readers and builders and the session's payloads all name it from here.
"""

from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]
