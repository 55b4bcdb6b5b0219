"""Checked by mypy only (never run): the documented API must type-check as users write it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import stagedroll


@dataclass
class Order:
    user_id: str
    total: float


rollouts = stagedroll.Rollouts.from_file("rollouts.toml", environment="prod")
same = stagedroll.Rollouts(stagedroll.load_policy("rollouts.toml"), store=stagedroll.MemoryStore())

on: bool = rollouts.enabled("new-checkout", "user-42")
decision: stagedroll.Decision = rollouts.decide("new-checkout", "user-42", {"country": "NZ"})
reason: stagedroll.Reason = decision.reason
checkout: stagedroll.Rollout = rollouts["new-checkout"]
fast: bool = checkout.enabled("user-42")


def legacy_checkout(order: Order) -> str:
    return "legacy"


@rollouts.guard("new-checkout", fallback=legacy_checkout, unit=lambda order: order.user_id)
def new_checkout(order: Order) -> str:
    return "new"


receipt: str = new_checkout(Order("user-42", 10.0))


async def legacy_fetch(user: str, *, limit: int = 10) -> list[str]:
    return []


@rollouts.guard("new-checkout", fallback=legacy_fetch, unit=lambda user, **_: user)
async def new_fetch(user: str, *, limit: int = 10) -> list[str]:
    return [user]


async def main() -> None:
    items: list[str] = await new_fetch("user-1", limit=3)
    async with rollouts.track("new-checkout", "user-42") as tracked:
        assert isinstance(tracked.enabled, bool)
        assert items is not None


with rollouts.track("new-checkout", "user-42") as tracked:
    stage: str | None = tracked.stage

asyncio.run(main())
rollouts.report("new-checkout", "user-42", error=True, latency_s=0.12)
transition: stagedroll.Transition = rollouts.freeze("new-checkout", reason="errors", actor="alice")
status: stagedroll.RolloutStatus = rollouts.status("new-checkout")
history: list[stagedroll.Transition] = rollouts.history("new-checkout")
hashed: int = stagedroll.bucket("new-checkout", "user-42")


def stores(policy: stagedroll.Policy, directory: str) -> None:
    """The stores of the docs, as their types are seen by users (never run)."""
    sqlite = stagedroll.SQLiteStore(f"{directory}/state.db", refresh_interval=1.0, timeout=0.5)
    fleet = stagedroll.RedisStore("redis://127.0.0.1:6379/0", prefix="shop", timeout=0.25)
    shared: stagedroll.SyncingStore = sqlite
    for store in (sqlite, fleet, stagedroll.MemoryStore()):
        bound = stagedroll.Rollouts(policy, store=store)
        assert bound.store is store
    by_url = stagedroll.Rollouts(policy, store=f"sqlite:///{directory}/state.db")
    counts: dict[str, int] = shared.add_counts("new-checkout", "1.0", {"errors.t": 1})
    new: list[bool] = by_url.store.add_units("new-checkout", "1/errors", ["user-42"])
    assert counts
    assert new


def patterns(policy: stagedroll.Policy) -> None:
    """The patterns of docs/patterns/, as their types are seen by users (never run)."""
    from stagedroll.patterns import ComparisonStats, Migration, Mismatch, Phase, Shadow

    bound = stagedroll.Rollouts(policy)

    def ranked(query: str, user_id: str) -> list[str]:
        return [query]

    shadow: Shadow[[str, str], list[str]] = bound.shadow(
        "new-ranking",
        candidate=ranked,
        unit=lambda query, user_id: user_id,
        compare=lambda old, new: set(old) == set(new),
        redact=len,
    )

    @shadow
    def search(query: str, user_id: str) -> list[str]:
        return [query]

    hits: list[str] = search("shoes", "user-42")
    stats: ComparisonStats = shadow.stats
    samples: list[Mismatch] = shadow.mismatches
    rows: dict[str, int] = {}

    def read(key: str) -> int | None:
        return rows.get(key)

    def write(key: str, value: int) -> None:
        rows[key] = value

    orders: Migration[[str], int | None, [str, int], None] = bound.migration(
        "orders-to-postgres", old_read=read, new_read=read, old_write=write, new_write=write
    )
    orders.write("user-42", "order-1", 3)
    amount: int | None = orders.read("user-42", "order-1")
    phase: Phase = orders.phase
    assert hits, (stats, samples, amount, phase)


# Issue 16: errors, on_error, steering from the store, one configuration with the CLI.
recent: tuple[stagedroll.RecentError, ...] = status.errors
raising = stagedroll.Rollouts.from_env(environment="dev", on_error="raise")
back: stagedroll.Transition = rollouts.rollback("new-checkout", to="canary", reason="errors")
resumed: stagedroll.Transition = rollouts.unfreeze("new-checkout", to=-1)
with stagedroll.Steering("sqlite:///state.db") as steering:
    names: list[str] = steering.names()
    stored: stagedroll.RolloutState | None = steering.load("new-checkout")
    ladder: tuple[tuple[str, float], ...] = stored.stages if stored is not None else ()
    killed: stagedroll.Transition = steering.apply(
        "new-checkout", stagedroll.Action.KILL, reason="incident", actor="oncall"
    )
