"""Deterministic bucketing: where a unit falls in ``[0, 2**32)`` and which cohort holds it.

The contract (fixed; the golden vectors in ``tests/data/bucketing.json`` pin it):

- ``hash = MurmurHash3_x86_32(utf8(salt + ":" + unit), seed=0)``, unsigned;
- ``threshold(p) = floor(p * 2**32 / 100)``, computed exactly for ``p`` in [0, 100]
  with at most four decimals;
- a unit is in the cohort of percentage ``p`` iff ``hash < threshold(p)``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from fractions import Fraction

import mmh3

__all__ = ["MAX_PERCENT_DECIMALS", "SPACE", "bucket", "percent_error", "threshold", "unit_key"]

SPACE: int = 2**32
"""The size of the hash space: buckets are integers in ``[0, SPACE)``."""

MAX_PERCENT_DECIMALS = 4
"""Percentages have at most this many decimals, so 0.0001 % is the finest step."""

_hash = mmh3.hash
_SCALE: int = 10**MAX_PERCENT_DECIMALS


def unit_key(unit: object) -> str:
    """Return the text that identifies ``unit`` in the hash key.

    ``str`` is taken as is, ``int`` and :class:`uuid.UUID` through ``str()`` (an ``int``
    subclass such as an ``IntEnum`` member by its number, whatever its ``__str__``). Anything
    else (``bool``, ``float``, ``bytes``, ``None``, objects) raises :class:`TypeError`:
    their text forms are ambiguous or unstable, so a silent ``repr`` would scatter units.
    """
    cls = unit.__class__
    if cls is str:
        return unit  # type: ignore[return-value]  # checked by the class test above
    if isinstance(unit, str):
        return str.__str__(unit)
    if isinstance(unit, int) and not isinstance(unit, bool):
        try:
            return int.__repr__(unit)
        except ValueError:  # beyond sys.get_int_max_str_digits()
            raise TypeError("an int unit this long cannot be written as text; pass a str") from None
    if isinstance(unit, uuid.UUID):
        return str(unit)
    raise TypeError(
        f"a rollout unit must be str, int or uuid.UUID, not {cls.__name__}; "
        "convert it explicitly (e.g. str(user.id))"
    )


def hash_key(key: str) -> int:
    """Hash a complete key (``salt:unit``) to an unsigned 32-bit integer."""
    if key.isascii():
        return _hash(key, 0, False)
    # mmh3 hashes the UTF-8 form of a str; a lone surrogate has none (and crashes some
    # mmh3 builds), so encode it ourselves, keeping surrogates as their 3-byte form.
    return _hash(key.encode("utf-8", "surrogatepass"), 0, False)


def bucket(salt: str, unit: object) -> int:
    """Return the bucket of ``unit`` under ``salt``: an integer in ``[0, 2**32)``.

    >>> bucket("new-checkout", "user-2")
    992310789
    """
    if not isinstance(salt, str):
        raise TypeError(f"salt must be str, not {type(salt).__name__}")
    return hash_key(str.__str__(salt) + ":" + unit_key(unit))


def percent_error(percent: object) -> str | None:
    """Say what is wrong with ``percent`` as a rollout percentage, or ``None`` if it is valid."""
    if isinstance(percent, bool) or not isinstance(percent, int | float | Decimal):
        return "must be a number"
    exact = _exact(percent)
    if not exact.is_finite():
        return "must be a finite number"
    if exact < 0 or exact > 100:
        return "must be between 0 and 100"
    # Fraction arithmetic is exact whatever the caller's decimal context says.
    if (Fraction(exact) * _SCALE).denominator != 1:
        return f"must have at most {MAX_PERCENT_DECIMALS} decimals"
    return None


def _exact(percent: float | int | Decimal) -> Decimal:
    """The decimal a percentage was written as: ``repr`` of a float is its shortest form."""
    return Decimal(repr(percent)) if isinstance(percent, float) else Decimal(percent)


def threshold(percent: float | int | Decimal) -> int:
    """Return the exclusive upper bound of the cohort for ``percent``.

    Exact: the percentage is read as the decimal it was written as (``repr`` of a float),
    so ``threshold(0.01) == 429496`` and ``threshold(100) == 2**32``.
    """
    problem = percent_error(percent)
    if problem is not None:
        raise ValueError(f"percent {percent!r} {problem}")
    steps = Fraction(_exact(percent)) * _SCALE
    return int(steps) * SPACE // (100 * _SCALE)
