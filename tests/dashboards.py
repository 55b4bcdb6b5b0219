"""The policy the dashboard's tests serve, shared by its server and browser tests."""

from __future__ import annotations

from typing import Any

STAGES = [
    {"name": "canary", "percent": 10},
    {"name": "half", "percent": 50},
    {"name": "all", "percent": 100},
]
POLICY: dict[str, Any] = {
    "rollouts": {
        "new-checkout": {"stages": STAGES, "health": {"min_events": 5}},
        "new-search": {"stages": STAGES},
    }
}
