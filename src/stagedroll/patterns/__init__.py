"""The staged-rollout patterns, on top of the same bucketing, policy, health and store.

- :func:`switch`: the blue-green switch.
"""

from ._switch import switch

__all__ = ["switch"]
