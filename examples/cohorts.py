"""Who gets the new path, stage by stage: cohorts of 100,000 synthetic users.

Loads ``rollouts.toml`` (next to this file), walks every rollout through its stages with
``Rollouts.advance`` (in memory; nothing is persisted), and decides each user at each stage.
The table shows each cohort's size, how its users got in (bucket or targeting), and checks
that it contains the previous stage's cohort: a user who has the new path keeps it.

    .venv/bin/python examples/cohorts.py        (or: make demo-cohorts)
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from stagedroll import Reason, Rollouts

POLICY = Path(__file__).resolve().parent / "rollouts.toml"
ENVIRONMENT = "production"
USERS = 100_000
SEED = 2024

User = tuple[str, Mapping[str, object]]  # (unit, attributes)


@dataclass(frozen=True)
class StageCohort:
    """The users one stage of one rollout turns the new path on for."""

    name: str
    percent: float
    members: frozenset[int]  # indices into the user list
    reasons: Counter[Reason]


def synthetic_users(count: int, seed: int = SEED) -> list[User]:
    """Users ``user-0``, ``user-1``, ... with attributes: ~0.4 % staff, ~3 % beta testers."""
    rng = random.Random(seed)
    users: list[User] = []
    for i in range(count):
        staff = rng.random() < 0.004
        attributes: dict[str, object] = {
            "email": f"user{i}@{'example.com' if staff else 'mail.test'}",
            "role": "staff" if staff else "customer",
            "country": rng.choice(("DE", "FR", "US", "JP", "BR")),
            "beta_opt_in": rng.random() < 0.05,
            "app_version": rng.choice(("4.0.3", "4.1.0", "4.2.0", "4.2.1", "4.3.0-rc.1")),
        }
        users.append((f"user-{i}", attributes))
    return users


def walk_stages(rollouts: Rollouts, name: str, users: Sequence[User]) -> list[StageCohort]:
    """Decide every user at every stage of rollout ``name``, advancing between stages."""
    rollout = rollouts[name]
    cohorts: list[StageCohort] = []
    for index, stage in enumerate(rollout.policy.stages):
        if index:
            rollouts.advance(name, reason="cohorts demo", actor="demo")
        assert rollout.state.stage == index
        members: set[int] = set()
        reasons: Counter[Reason] = Counter()
        for i, (unit, attributes) in enumerate(users):
            decision = rollout.decide(unit, attributes)
            if decision.enabled:
                members.add(i)
                reasons[decision.reason] += 1
        cohorts.append(StageCohort(stage.name, stage.percent, frozenset(members), reasons))
    return cohorts


def print_rollout(rollouts: Rollouts, name: str, cohorts: Sequence[StageCohort]) -> None:
    policy = rollouts[name].policy
    salt = policy.salt_or(name)
    pinned = "pinned salt" if policy.salt is not None else "salt"
    allow, deny = len(policy.targeting.allow), len(policy.targeting.deny)
    print(f"{name}: {pinned} {salt!r}; allow list {allow} (always on), deny list {deny} (never)")
    header = ("stage", "target", "in cohort", "share", "by bucket", "by targeting")
    print("  {:<10} {:>7} {:>10} {:>8} {:>10} {:>13}  contains previous".format(*header))
    previous: frozenset[int] | None = None
    for cohort in cohorts:
        size = len(cohort.members)
        by_bucket = cohort.reasons[Reason.IN_COHORT]
        if previous is None:
            grows = "(first stage)"
        else:
            lost = len(previous - cohort.members)
            grows = "yes" if not lost else f"NO: {lost:,} users lost the new path"
        print(
            f"  {cohort.name:<10} {cohort.percent:>6g}% {size:>10,} {size / USERS:>8.3%}"
            f" {by_bucket:>10,} {size - by_bucket:>13,}  {grows}"
        )
        previous = cohort.members
    print()


def print_independence(first: tuple[str, StageCohort], second: tuple[str, StageCohort]) -> None:
    """Different salts give unrelated buckets: the overlap is the product of the shares."""
    (a_name, a), (b_name, b) = first, second
    both = len(a.members & b.members)
    p = len(a.members) / USERS * len(b.members) / USERS
    expected, sd = USERS * p, math.sqrt(USERS * p * (1 - p))
    print(
        f"independence: {a_name}@{a.name} ({len(a.members) / USERS:.1%}) and "
        f"{b_name}@{b.name} ({len(b.members) / USERS:.1%}) both on for {both:,} users;\n"
        f"  independent cohorts predict {expected:,.0f} +/- {sd:.0f} "
        f"(observed {(both - expected) / sd:+.1f} sd from it)"
    )


def main() -> None:
    # Rollouts logs each transition through structlog; keep the table alone on stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rollouts = Rollouts(POLICY, environment=ENVIRONMENT)  # in memory: a fresh MemoryStore
    users = synthetic_users(USERS)
    print(f"{USERS:,} synthetic users, environment {ENVIRONMENT!r}, policy {POLICY.name}\n")

    walked = {name: walk_stages(rollouts, name, users) for name in rollouts}
    for name, cohorts in walked.items():
        print_rollout(rollouts, name, cohorts)

    def stage(name: str, stage_name: str) -> tuple[str, StageCohort]:
        return name, next(c for c in walked[name] if c.name == stage_name)

    print_independence(stage("new-checkout", "half"), stage("search-v2", "wider"))


if __name__ == "__main__":
    main()
