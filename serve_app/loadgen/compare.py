"""`--compare A.json B.json`: the key aggregates of two results files side by side, with B/A ratios."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Getter = Callable[[dict[str, Any]], Any]


def _at(*keys: str) -> Getter:
    def get(report: dict[str, Any]) -> Any:
        value: Any = report
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    return get


def _count(key: str) -> Getter:
    return lambda report: sum((_at("aggregate", key)(report) or {}).values())


ROWS: tuple[tuple[str, Getter], ...] = (
    ("sessions", _at("sessions_requested")),
    ("admitted", _at("aggregate", "admitted")),
    ("refused", _at("aggregate", "refused")),
    ("errors", _count("errors_by_code")),
    ("first audio median, s", _at("aggregate", "first_audio_s", "median")),
    ("first audio p99, s", _at("aggregate", "first_audio_s", "p99")),
    ("client RTF median", _at("aggregate", "client_rtf_median")),
    ("packet interval median, ms", _at("aggregate", "packet_interval_ms", "median")),
    ("packet interval p99, ms", _at("aggregate", "packet_interval_ms", "p99")),
    ("packet interval max, ms", _at("aggregate", "packet_interval_ms", "max")),
    ("frame deficit, %", _at("aggregate", "frame_deficit_pct")),
    ("underrun total, s", _at("aggregate", "underrun_total_s")),
    ("underrun max per session, s", _at("aggregate", "underrun_s", "max")),
    ("client loop lag max, ms", _at("client_loop_lag_max_ms")),
    ("find-max: largest N held", _at("find_max", "max_sessions")),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if not numbers or a == 0:
        return "-"
    return f"{b / a:.2f}x"


def compare_reports(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str] = ("A", "B")) -> str:
    """A text table: one row per aggregate both files may carry (rows neither has are left out)."""
    rows = [(name, get(a), get(b)) for name, get in ROWS]
    rows = [r for r in rows if r[1] is not None or r[2] is not None]
    header = ("", labels[0], labels[1], "B/A")
    table = [header, *((name, _cell(x), _cell(y), _ratio(x, y)) for name, x, y in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare_files(a: Path, b: Path) -> str:
    reports = [json.loads(path.read_text()) for path in (a, b)]
    urls = [
        f"{label}: {path}  ({r.get('config', {}).get('url', '?')}, {r.get('started_at', '?')})"
        for label, path, r in zip(("A", "B"), (a, b), reports, strict=True)
    ]
    return "\n".join([*urls, "", compare_reports(reports[0], reports[1])])
