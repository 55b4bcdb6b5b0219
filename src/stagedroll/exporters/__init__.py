"""Metrics of rollouts, read from the public read model (see ``docs/observability.md``).

Import the exporter you use by its path; each needs its extra:

- :mod:`stagedroll.exporters.prometheus` (``stagedroll[prometheus]``): a collector that
  reads :meth:`Rollouts.snapshot <stagedroll.Rollouts.snapshot>` at each scrape;
- :mod:`stagedroll.exporters.otel` (``stagedroll[otel]``): observable OpenTelemetry
  instruments read at each collection, and transitions as events.

Neither costs a guarded call anything: they read the counters the calls already keep.
"""

from __future__ import annotations

__all__: list[str] = []
