"""The bucketing of other flag systems: a rollout moved here keeps every unit's cohort.

A team that runs a percentage rollout in Unleash, GrowthBook, flagd or LaunchDarkly cannot
switch it to stagedroll's own hash mid-flight: another hash puts another quarter of the
users in a 25 % cohort. Each of those systems buckets deterministically from what the unit
has, and each is monotone in the percentage, so their cohorts are reproduced here. Each
scheme gives a unit's ``position`` (an integer of its own space) and, for a percentage, the
``cut``: a unit is in the cohort iff ``position(key) < cut(percent)``. The cut only grows
with the percentage, so a unit in at 25 % stays in at 50 %.

The formulas (each pinned by the vendor's own test values and by the decisions of its
SDK, unit for unit, in ``tests/data/vendors/``, whose notes say where each was read):

- **Unleash** (``flexibleRollout``): ``MurmurHash3_x86_32(utf8(group_id + ":" + unit), 0)``
  unsigned, ``% 100 + 1 <= percent``; whole percents only.
- **GrowthBook** (hash version 2): ``n = fnv1a32(str(fnv1a32(seed + unit))) % 10000 / 10000``
  and ``n < coverage``, FNV-1a over UTF-16 code units; steps of 0.01 %. Version 1:
  ``fnv1a32(unit + seed) % 1000 / 1000``; steps of 0.1 %.
- **flagd** (``fractional``, flagd-core 2): ``bucket = (MurmurHash3_x86_32(cbor([flag_key,
  unit]), 0)`` unsigned ``* 100) >> 32``, the CBOR canonical encoding of the two texts, in
  iff ``bucket < percent`` (the new path's variant listed first); whole percents only.
- **LaunchDarkly**: ``h = int(sha1(flag_key + "." + salt + "." + unit)[:15], 16)`` (with a
  rollout ``seed``: ``sha1(seed + "." + unit)``), in iff ``h / 0xFFFFFFFFFFFFFFF < weight /
  100000`` as the SDK computes it in floats; steps of 0.001 %.

At 0 % no scheme lets a unit in (stagedroll's kill). An empty unit id is never in with
GrowthBook, flagd or LaunchDarkly (their SDKs turn it away), as it is there. Nor is, with
GrowthBook, a key longer than :data:`MAX_FNV_KEY`: its hash runs in Python, and a hostile id
must not slow the caller down.
"""

from __future__ import annotations

import hashlib
import sys
from decimal import Decimal
from fractions import Fraction

import mmh3

from ._bucketing import SPACE, hash_key, threshold

__all__ = [
    "MAX_FNV_KEY",
    "SCHEMES",
    "UNIT_PLACEHOLDER",
    "BucketingScheme",
    "Flagd",
    "GrowthBook",
    "LaunchDarkly",
    "Stagedroll",
    "Unleash",
    "percent_problem",
    "step_of",
]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_LD_SCALE = 0xFFFFFFFFFFFFFFF  # 15 hex digits: the divisor LaunchDarkly's SDKs use
_mmh3 = mmh3.hash
UNIT_PLACEHOLDER = "{unit}"
"""Where a flagd ``template`` puts the unit's key."""
_sha1 = hashlib.sha1
_UTF16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"  # read back in native order
MAX_FNV_KEY = 1024
"""The longest unit key GrowthBook bucketing hashes (characters): FNV-1a runs in Python,
about 0.1 µs a character, so a longer key (no real id is) is never in."""


def fnv1a32(text: str) -> int:
    """FNV-1a, 32 bits, over the UTF-16 code units of ``text``, as GrowthBook's SDKs hash.

    Its JavaScript reference hashes ``charCodeAt``: an emoji is two units.
    """
    return _fnv(text, _FNV_OFFSET)


def _fnv(text: str, h: int) -> int:
    """FNV-1a from state ``h`` over ``text`` (a hash of a prefix goes on over the rest)."""
    # ASCII text's code units are its bytes, which iterate faster than a cast memoryview.
    data = (
        text.encode("ascii")
        if text.isascii()
        else memoryview(text.encode(_UTF16, "surrogatepass")).cast("H")
    )
    for code in data:
        h = ((h & 0xFFFFFFFF) ^ code) * _FNV_PRIME  # modulo 2**32 once at the end: the same
    return h & 0xFFFFFFFF


def _cbor_text(text: str) -> bytes:
    """``text`` as a CBOR text string, its length in the shortest form (canonical)."""
    data = text.encode("utf-8", "surrogatepass")
    size = len(data)
    if size < 24:
        return bytes([0x60 + size]) + data
    for head, width in ((0x78, 1), (0x79, 2), (0x7A, 4), (0x7B, 8)):
        if size < 1 << (8 * width):
            return bytes([head]) + size.to_bytes(width, "big") + data
    raise ValueError("text too long for CBOR")  # pragma: no cover - 2**64 bytes


def _exact(percent: float | int | Decimal) -> Fraction:
    return Fraction(Decimal(repr(percent)) if isinstance(percent, float) else Decimal(percent))


class BucketingScheme:
    """How a rollout places its units: ``position(key) < cut(percent)`` is in the cohort.

    A rollout's scheme comes from its policy (:meth:`RolloutPolicy.scheme
    <stagedroll.RolloutPolicy.scheme>`): stagedroll's own contract by default, or the
    bucketing of Unleash, GrowthBook, flagd or LaunchDarkly (``bucketing`` in the policy), so
    that a rollout moved from one of them keeps every unit's cohort. Positions are integers
    in ``[0, space)``; a unit the scheme never lets in (an empty id, for some vendors) is
    placed at ``space`` or beyond.

    >>> scheme = RolloutPolicy.model_validate(
    ...     {"stages": [{"name": "all", "percent": 25}],
    ...      "bucketing": {"scheme": "unleash", "group_id": "gr1"}}).scheme("checkout")
    >>> scheme.position("123"), scheme.cut(25), scheme.space
    (72, 25, 100)
    """

    __slots__ = ()

    name = ""
    """The scheme's name in a policy's ``bucketing.scheme``."""
    step = Fraction(1)
    """The finest step of the percentages the scheme can express, in percent."""
    space = 100
    """Positions are integers below this (a unit never in is placed at it or beyond)."""

    def position(self, key: str) -> int:
        """The unit's place in the scheme's space (its key as text)."""
        raise NotImplementedError

    def cut(self, percent: float | int | Decimal) -> int:
        """The positions below it are in the cohort of ``percent`` (0 at 0 %)."""
        raise NotImplementedError

    def problem(self, percent: float | int | Decimal) -> str | None:
        """Why the scheme cannot express ``percent`` (finer than its step), or ``None``."""
        return _problem(self.name, self.step, percent)

    def describe(self) -> str:
        """The scheme and its parameters, as an operator reads them."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<BucketingScheme {self.describe()}>"


def _problem(name: str, step: Fraction, percent: float | int | Decimal) -> str | None:
    if (_exact(percent) / step).denominator != 1:
        return (f"{percent!r} is finer than {name} bucketing can express "
                f"(steps of {_text(step)} %)")  # fmt: skip
    return None


class Stagedroll(BucketingScheme):
    """stagedroll's own contract (``docs/bucketing.md``): MurmurHash3 of ``salt:unit``."""

    __slots__ = ("prefix", "salt")
    name = "stagedroll"
    step = Fraction(1, 10_000)
    space = SPACE

    def __init__(self, salt: str) -> None:
        self.salt = salt
        self.prefix = salt + ":"

    def position(self, key: str) -> int:
        return hash_key(self.prefix + key)

    def cut(self, percent: float | int | Decimal) -> int:
        return threshold(percent)

    def describe(self) -> str:
        return f"stagedroll, salt {self.salt!r}"


class Unleash(BucketingScheme):
    """Unleash's ``flexibleRollout``: ``group_id`` defaults to the toggle's name."""

    __slots__ = ("group_id", "prefix")
    name = "unleash"

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.prefix = group_id + ":"

    def position(self, key: str) -> int:
        return hash_key(self.prefix + key) % 100  # normalized (1 to 100) minus one

    def cut(self, percent: float | int | Decimal) -> int:
        return int(_exact(percent))  # normalized <= percent, percent whole

    def describe(self) -> str:
        return f"unleash, group_id {self.group_id!r}"


class GrowthBook(BucketingScheme):
    """GrowthBook's rollout ``coverage``: ``seed`` defaults to the feature's key."""

    __slots__ = ("modulus", "seed", "seeded", "version")
    name = "growthbook"

    def __init__(self, seed: str, version: int = 2) -> None:
        if version not in (1, 2):
            raise ValueError(f"GrowthBook hash version must be 1 or 2, not {version!r}")
        self.seed = seed
        self.version = version
        self.modulus = 10_000 if version == 2 else 1_000
        self.seeded = _fnv(seed, _FNV_OFFSET)  # version 2 hashes seed + unit: the seed once

    @property
    def step(self) -> Fraction:  # type: ignore[override]
        return Fraction(100, self.modulus)

    @property
    def space(self) -> int:  # type: ignore[override]
        return self.modulus

    def describe(self) -> str:
        return f"growthbook, seed {self.seed!r}, hash_version {self.version}"

    def position(self, key: str) -> int:
        if not key or len(key) > MAX_FNV_KEY:
            return self.modulus  # never in: the SDK includes no unit without an id
        if self.version == 2:
            return fnv1a32(str(_fnv(key, self.seeded))) % 10_000
        return fnv1a32(key + self.seed) % 1_000

    def cut(self, percent: float | int | Decimal) -> int:
        # n < coverage, both floats as the SDK has them (the coverage read from the decimal
        # text a feature's JSON holds): the first position that is out.
        coverage = float(_exact(percent) / 100)
        first = min(int(coverage * self.modulus), self.modulus)
        while first > 0 and (first - 1) / self.modulus >= coverage:
            first -= 1
        while first < self.modulus and first / self.modulus < coverage:
            first += 1
        return first


class Flagd(BucketingScheme):
    """flagd's ``fractional`` over two variants: the new path's weight, then the old's.

    With ``template`` (a text holding ``{unit}`` once), the bucketing expression of a
    ``fractional`` whose value is that text: ``{"cat": ["campaign-7:", {"var":
    "targetingKey"}]}`` is ``"campaign-7:{unit}"``. flagd hashes the CBOR of the expression's
    value, a text, instead of the pair.
    """

    __slots__ = ("flag_key", "head", "prefix", "suffix", "template")
    name = "flagd"

    def __init__(self, flag_key: str, template: str | None = None) -> None:
        self.flag_key = flag_key
        self.head = b"\x82" + _cbor_text(flag_key)  # an array of two, then the flag's key
        self.template = template
        self.prefix, _, self.suffix = (template or "").partition(UNIT_PLACEHOLDER)

    def position(self, key: str) -> int:
        if self.template is not None:
            # The expression's text: an empty targeting key reaches it as null, which
            # JsonLogic's ``cat`` writes as "null".
            text = self.prefix + (key or "null") + self.suffix
            return (_mmh3(_cbor_text(text), 0, False) * 100) >> 32
        if not key:
            return 100  # never in: the SDK serves the default to a unit without an id
        data = key.encode("utf-8", "surrogatepass")
        size = len(data)  # a short text's head is one byte: 0x60 plus its length
        unit = bytes((0x60 + size,)) + data if size < 24 else _cbor_text(key)
        return (_mmh3(self.head + unit, 0, False) * 100) >> 32  # the CBOR of [flag_key, unit]

    def cut(self, percent: float | int | Decimal) -> int:
        return int(_exact(percent))  # bucket < the new path's weight, of 100

    def describe(self) -> str:
        if self.template is not None:
            return f"flagd, template {self.template!r}"
        return f"flagd, flag_key {self.flag_key!r}"


class LaunchDarkly(BucketingScheme):
    """LaunchDarkly's percentage rollout: the flag's key and salt (or a rollout ``seed``)."""

    __slots__ = ("flag_key", "prefix", "salt", "seed")
    name = "launchdarkly"
    step = Fraction(1, 1000)
    space = _LD_SCALE + 1

    def __init__(self, flag_key: str, salt: str, seed: int | None = None) -> None:
        self.flag_key, self.salt, self.seed = flag_key, salt, seed
        self.prefix = f"{seed}." if seed is not None else f"{flag_key}.{salt}."

    def describe(self) -> str:
        if self.seed is not None:
            return f"launchdarkly, seed {self.seed}"
        return f"launchdarkly, flag_key {self.flag_key!r}, salt {self.salt!r}"

    def position(self, key: str) -> int:
        if not key:
            return _LD_SCALE + 1  # never in: the SDK refuses a context without a key
        digest = _sha1((self.prefix + key).encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") >> 4  # its first 15 hex digits

    def cut(self, percent: float | int | Decimal) -> int:
        weight = int(_exact(percent) * 1000)  # 1/1000 of a percent, as LaunchDarkly weighs
        if weight == 0:
            return 0
        # h / scale < weight / 100000 in floats, as the SDK computes it: the first h out.
        bound = weight / 100_000
        low, high = 0, _LD_SCALE + 1  # invariant: low is in, high is out (or the end)
        while high - low > 1:
            middle = (low + high) // 2
            if middle / _LD_SCALE < bound:
                low = middle
            else:
                high = middle
        return high


SCHEMES: dict[str, type[BucketingScheme]] = {
    scheme.name: scheme for scheme in (Stagedroll, Unleash, GrowthBook, Flagd, LaunchDarkly)
}
"""The schemes by the name a policy gives them."""


def step_of(name: str, hash_version: int | None = None) -> Fraction:
    """The finest percent step of scheme ``name`` (GrowthBook's: of its hash version, or 1)."""
    if name == "growthbook":
        return Fraction(1, 100) if hash_version == 2 else Fraction(1, 10)
    return SCHEMES[name].step


def percent_problem(name: str, hash_version: int | None, percent: float) -> str | None:
    """Why scheme ``name`` cannot express ``percent``, or ``None``."""
    return _problem(name, step_of(name, hash_version), percent)


def _text(step: Fraction) -> str:
    return format(Decimal(step.numerator) / Decimal(step.denominator), "f").rstrip("0").rstrip(".")
