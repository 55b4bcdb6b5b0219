"""Pictures of a rollout, drawn with matplotlib (``pip install 'stagedroll[plot]'``).

:func:`timeline` draws the share of units a rollout served over time, with each
transition marked; :func:`evidence` draws the health gate's evidence over time against
its freeze and rollback bars, and each arm's error rate. Both read only the public read
model (a history of :class:`~stagedroll.Transition` entries, :class:`~stagedroll.RolloutStatus`
samples) and return a :class:`matplotlib.figure.Figure`, made without ``pyplot`` (no GUI,
no global figure); :func:`save` writes one as PNG or SVG, reproducibly. matplotlib is
imported when a picture is drawn: without it, they raise
:class:`~stagedroll.exceptions.MissingExtraError` with the install hint.
"""

from __future__ import annotations

from ._evidence import evidence
from ._figure import save
from ._timeline import Ladder, timeline

__all__ = ["Ladder", "evidence", "save", "timeline"]
