"""A live, read-only dashboard of the rollouts a store holds (standard library only).

``stagedroll dashboard --store URL`` serves it; from Python::

    from stagedroll.dashboard import Dashboard

    with Dashboard(rollouts, port=0).start() as dashboard:
        print(dashboard.url)

One page (no build step, nothing fetched from the internet) lists every rollout and shows
one in detail; it polls the JSON API (``/api/rollouts``, ``/api/rollouts/NAME``), which one
thread refreshes from the store on a timer. It binds to 127.0.0.1 by default, answers GET
only, and has no authentication: put it behind your own if you expose it.
"""

from __future__ import annotations

from ._model import SCHEMA_VERSION
from ._server import DEFAULT_HOST, DEFAULT_PORT, Dashboard, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "SCHEMA_VERSION", "Dashboard", "serve"]
