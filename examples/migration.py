"""Moving user profiles to a new table, phase by phase: an expand/contract migration.

Two tables of one SQLite file play the two stores: ``profiles_old``, and ``profiles_new``,
which keeps the plan as a numeric tier. ``Rollouts.migration`` sends each read and write
of the simulated users to the store(s) of the phase in force, and an operator takes the
migration through its six phases with ``advance``:

    off -> dual_write -> (backfill) -> shadow_read -> live -> rampdown -> complete

The first version of the new store's write function has a bug: it cuts display names to
24 characters. Nothing raises, so the dual writes and the backfill look fine. In
``shadow_read`` each read of the old table is compared with the new one, a disagreement
counts as an error of the new store, and the health gate freezes the migration by itself,
while the old table keeps answering (no user sees a cut name). The operator fixes the
function, repairs the new table with a second backfill and unfreezes. From ``live`` on,
the new table is authoritative: a read that fails there raises, with no fallback to the
old table, which may have missed writes (its failures are then counted, not raised). The
migration goes on to ``complete``, and the end checks that the new table holds exactly
what was written.

    .venv/bin/python examples/migration.py        (or: make demo-migration)

``--units`` (at least 100) and ``--requests`` (at least 400) set the size: below these,
``shadow_read`` may read too few users with a long name for the health gate to freeze.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import structlog

from stagedroll import MemoryStore, Rollouts, Status, TransitionEvent, parse_policy
from stagedroll.patterns import Migration, Phase
from stagedroll.testing import FakeClock

SEED = 5
PROFILES = 1_000  # rows of the old table when the migration starts
REQUESTS = 1_500  # simulated requests in each phase
# The smallest sizes that let the freeze happen: shadow_read must read at least 10 users
# whose names the buggy write cut (min_events below), and about 1 name in 6 is that long.
# At these minimums, 1,000 seeds out of 1,000 froze.
MIN_PROFILES = 100
MIN_REQUESTS = 400
REQUEST_INTERVAL = 2.0  # simulated seconds between two requests
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, on the simulated clock
NAME = "profiles-v2"  # the rollout that carries the migration
NAME_LIMIT = 24  # where the buggy write cuts names

# The policy, as it would sit in rollouts.toml.
POLICY = """
[rollouts.profiles-v2]
# An expand/contract migration: rollouts.migration needs this line, which makes the policy
# check the six phases below, and has the health test judge both stores of each compared
# read at a share of 1/2 (in every process sharing the store, the CLI's too).
pattern = "migration"
# Only an operator moves the migration on: the backfill has to happen between two steps.
# (A migration refuses advance = "auto".)
advance = "manual"
# The six phases, in order. Their percents need only grow: a phase applies to every user
# at once (a table cannot be half migrated per user).
stages = [
  { name = "off", percent = 0 },
  { name = "dual_write", percent = 20 },
  { name = "shadow_read", percent = 40 },
  { name = "live", percent = 60 },
  { name = "rampdown", percent = 80 },
  { name = "complete", percent = 100 },
]

[rollouts.profiles-v2.health]
# On each compared read (shadow_read and live), the old store's outcome goes on the control
# arm and the new store's on treatment, at a share of 1/2; in shadow_read, a read of the
# new store that disagrees with the old one is an error. Writes are not tested. Freeze at
# E >= 100 rather than 20, and only on the disagreements of at least 10 different users:
# a migration frozen by mistake costs an operator's time.
alpha_freeze = 0.01
min_events = 10
# No latency test: both tables live in one SQLite file, and a test of the new store's
# learnt 95th percentile would judge noise of a few microseconds.
"""

# Where each phase reads and writes (see stagedroll.patterns.Migration).
ROUTES = {
    Phase.OFF: "reads: old | writes: old",
    Phase.DUAL_WRITE: "reads: old | writes: old, then new",
    Phase.SHADOW_READ: "reads: old, compared with new | writes: old, then new",
    Phase.LIVE: "reads: new, compared with old | writes: new, then old",
    Phase.RAMPDOWN: "reads: new | writes: new, then old",
    Phase.COMPLETE: "reads: new | writes: new",
}

PLANS = ("free", "pro", "team")  # the old table's text; the new one keeps the index (tier)
FIRST = ("Ada", "Bo", "Chiara", "Dmitri", "Eun-ji", "Femi", "Guadalupe", "Hiroshi", "Ines",
         "Jaroslav", "Kwame", "Leilani", "Maximiliana", "Nnamdi", "Oluwaseun", "Priya")  # fmt: skip
LAST = ("Li", "Okafor", "Nakamura", "Svensson", "Moreau", "Papadopoulos", "Abernathy-Clarke",
        "Featherstonehaugh", "Vasquez-Hernandez", "Wolfeschlegel", "Ng", "Kowalczyk",
        "Castellanos-Moreno", "Oyelaran-Whitfield")  # fmt: skip

SCHEMA = """
CREATE TABLE profiles_old (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, plan TEXT NOT NULL
);
CREATE TABLE profiles_new (
    id INTEGER PRIMARY KEY, display_name TEXT NOT NULL, email TEXT NOT NULL,
    tier INTEGER NOT NULL
);
"""


class Profile(NamedTuple):
    """A user's profile, as both stores' read functions return it."""

    id: int
    name: str
    email: str
    plan: str  # one of PLANS


# -- the two stores ------------------------------------------------------------------------


class Tables:
    """The old store and the new store: two tables of one SQLite database."""

    def __init__(self, path: Path) -> None:
        # Autocommit: each statement is a transaction of its own, except between an
        # explicit BEGIN and COMMIT (see transaction()).
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # a demo: no fsync at each write
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: SQLite lets no other writer in until it ends."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # The old store.

    def read_old(self, user_id: int) -> Profile | None:
        row = self.db.execute(
            "SELECT id, name, email, plan FROM profiles_old WHERE id = ?", (user_id,)
        ).fetchone()
        return None if row is None else Profile(*row)

    def write_old(self, profile: Profile) -> None:
        self.db.execute(
            "INSERT INTO profiles_old (id, name, email, plan) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET "
            "name = excluded.name, email = excluded.email, plan = excluded.plan",
            profile,
        )

    # The new store: another layout, the same profiles.

    def read_new(self, user_id: int) -> Profile | None:
        row = self.db.execute(
            "SELECT id, display_name, email, tier FROM profiles_new WHERE id = ?", (user_id,)
        ).fetchone()
        return None if row is None else Profile(row[0], row[1], row[2], PLANS[row[3]])

    def write_new(self, profile: Profile) -> None:
        self.db.execute(
            "INSERT INTO profiles_new (id, display_name, email, tier) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET "
            "display_name = excluded.display_name, email = excluded.email, tier = excluded.tier",
            (profile.id, profile.name, profile.email, PLANS.index(profile.plan)),
        )

    def write_new_v1(self, profile: Profile) -> None:
        """The first version of write_new, as first deployed: it has a bug."""
        # BUG: someone read the old form's 24-character limit as the column's size. Longer
        # names are cut, silently: nothing raises, so no write fails.
        self.write_new(profile._replace(name=profile.name[:NAME_LIMIT]))

    # Whole tables, for the backfill and the checks.

    def old_rows(self) -> dict[int, Profile]:
        rows = self.db.execute("SELECT id, name, email, plan FROM profiles_old")
        return {row[0]: Profile(*row) for row in rows}

    def new_rows(self) -> dict[int, Profile]:
        rows = self.db.execute("SELECT id, display_name, email, tier FROM profiles_new")
        return {row[0]: Profile(row[0], row[1], row[2], PLANS[row[3]]) for row in rows}


def backfill(tables: Tables, write_new: Callable[[Profile], None]) -> int:
    """Copy every row of the old table to the new one; return how many.

    The copy goes through the new store's own write function, the one the dual writes use
    (so, until it is fixed, it shares their bug).

    It must run once dual writes are on, in every process. From then on, each write reaches
    both tables: a row copied here is kept up to date by the writes that follow, and a row
    not copied yet is copied with its latest value. Run before dual writes, the backfill
    would be stale as soon as it ended: a row created or changed after its copy, and before
    dual writes began, would be missing or out of date in the new table, and nothing would
    ever copy it again.

    It runs in one transaction, so that no dual write can come between reading a row of the
    old table and writing its copy (which would then overwrite the newer value with the
    older one). Both tables being in one SQLite file makes that easy; between two separate
    databases, copy in batches and write a copy only if the row did not change meanwhile.
    """
    with tables.transaction():
        rows = tables.old_rows()
        for profile in rows.values():
            write_new(profile)
    return len(rows)


def redact(result: object) -> object:
    """What a mismatch sample keeps of a read's result: the profile, its email masked."""
    if isinstance(result, Profile):
        user, _, domain = result.email.partition("@")
        return result._replace(email=f"{user[:1]}***@{domain}")
    return result


ProfileMigration = Migration[[int], Profile | None, [Profile], None]


def build_migration(
    rollouts: Rollouts, tables: Tables, new_write: Callable[[Profile], None]
) -> ProfileMigration:
    """The migration over rollout NAME: each phase's reads and writes, through the tables."""
    return rollouts.migration(
        NAME,
        old_read=tables.read_old,
        new_read=tables.read_new,
        old_write=tables.write_old,
        new_write=new_write,
        redact=redact,  # mismatch samples are kept, and printed: hide the emails
        samples=20,
    )


# -- simulated users -----------------------------------------------------------------------


def unit_of(user_id: int) -> str:
    """The unit of a call: the user it reads or writes (an error counts once per user)."""
    return f"user-{user_id}"


@dataclass
class Users:
    """The simulated users, and what the database must hold: every acknowledged write."""

    rng: random.Random
    expected: dict[int, Profile] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)  # the keys of expected, to draw from

    def add(self, profile: Profile) -> None:
        """Take note of an acknowledged write: the database must now hold ``profile``."""
        if profile.id not in self.expected:
            self.ids.append(profile.id)
        self.expected[profile.id] = profile

    def pick(self) -> int:
        return self.rng.choice(self.ids)

    def name(self) -> str:
        return f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"

    def email(self, user_id: int, name: str) -> str:
        slug = name.split(maxsplit=1)[0].lower().replace("-", "")
        return f"{slug}.{user_id}@{self.rng.choice(('mail.test', 'example.org'))}"

    def signup(self) -> Profile:
        user_id = len(self.ids) + 1
        name = self.name()
        return Profile(user_id, name, self.email(user_id, name), self.rng.choice(PLANS))

    def update(self) -> Profile:
        """A change to a random user's profile: a new name, email or plan."""
        profile = self.expected[self.pick()]
        change = self.rng.random()
        if change < 0.4:
            return profile._replace(name=self.name())
        if change < 0.7:
            return profile._replace(email=self.email(profile.id, profile.name))
        return profile._replace(plan=self.rng.choice(PLANS))


@dataclass
class Tally:
    """What a phase's traffic did."""

    reads: int = 0
    updates: int = 0
    signups: int = 0
    wrong: int = 0  # reads that did not return the profile last written (must stay 0)


def traffic(
    migration: ProfileMigration,
    users: Users,
    clock: FakeClock,
    requests: int,
    until: Callable[[], bool] = lambda: False,
) -> Tally:
    """Simulated requests: 75 % reads, 20 % profile updates, 5 % sign-ups.

    Stops early when ``until()`` turns true. Every read is checked against
    ``users.expected``: whatever the phase, and whatever the new table holds, no user may
    get a profile other than the one last written.
    """
    rng, tally = users.rng, Tally()
    for _ in range(requests):
        if until():
            break
        clock.advance(REQUEST_INTERVAL)
        kind = rng.random()
        if kind < 0.75:
            user_id = users.pick()
            if migration.read(unit_of(user_id), user_id) != users.expected[user_id]:
                tally.wrong += 1
            tally.reads += 1
        else:
            profile = users.signup() if kind >= 0.95 else users.update()
            migration.write(unit_of(profile.id), profile)
            users.add(profile)  # acknowledged: the database must hold it
            if kind >= 0.95:
                tally.signups += 1
            else:
                tally.updates += 1
    return tally


# -- the story -----------------------------------------------------------------------------


def stamp(seconds: float) -> str:
    """A moment of the simulated clock, as hours:minutes since the start."""
    elapsed = int(seconds - START)
    return f"{elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}"


def shown(result: object) -> str:
    if isinstance(result, Profile):
        return f"{result.name!r} {result.email} {result.plan}"
    return repr(result)


class Stopped(Exception):
    """The operator stops the migration: something is wrong."""


class Demo:
    """The migration, step by step; ``problems`` lists the checks that failed."""

    def __init__(self, tables: Tables, path: Path, *, units: int, requests: int,
                 seed: int) -> None:  # fmt: skip
        if units < MIN_PROFILES or requests < MIN_REQUESTS:
            raise ValueError(f"units must be >= {MIN_PROFILES} and requests >= "
                             f"{MIN_REQUESTS}, not {units} and {requests}")  # fmt: skip
        self.tables, self.requests = tables, requests
        self.users = Users(random.Random(seed))
        for _ in range(units):  # the old table as it stands before the migration
            profile = self.users.signup()
            tables.write_old(profile)
            self.users.add(profile)
        self.clock = FakeClock(start=START)
        self.events: list[TransitionEvent] = []
        self.problems: list[str] = []
        policy = parse_policy(POLICY, format="toml")
        self.rollouts = Rollouts(policy, store=MemoryStore(), clock=self.clock,
                                 on_transition=self.on_transition)  # fmt: skip
        # The new store's code as first deployed: with the buggy write.
        self.migration = build_migration(self.rollouts, tables, tables.write_new_v1)
        print(f"{units:,} profiles move from profiles_old to profiles_new in {path} "
              f"(seed {seed}, {requests:,} requests per phase)")  # fmt: skip

    def on_transition(self, event: TransitionEvent) -> None:
        self.events.append(event)
        who = "auto" if event.automatic else event.actor
        print(f"{stamp(event.at)}  {event.action.value:>9} {event.from_stage_name} -> "
              f"{event.to_stage_name} [{event.to_status}] ({who}: {event.reason})")  # fmt: skip

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def serve(self, title: str = "", until: Callable[[], bool] = lambda: False) -> Tally:
        """One phase's traffic, between a line that names the phase and one that sums it up."""
        phase = self.migration.phase
        print(f"\n--- {phase}{title}: {ROUTES[phase]}")
        tally = traffic(self.migration, self.users, self.clock, self.requests, until)
        stats = self.migration.stats
        print(f"{stamp(self.clock())}  {tally.reads:,} reads, {tally.updates:,} updates, "
              f"{tally.signups:,} sign-ups; wrong answers to users: {tally.wrong}; compared "
              f"reads so far {stats.compared:,}, mismatched {stats.mismatched}, new-store "
              f"errors {stats.new_errors}")  # fmt: skip
        self.check(not tally.wrong, f"{tally.wrong} users got a wrong answer in {phase}")
        return tally

    def operator(self, action: Callable[..., object], reason: str, *, check: bool = True) -> None:
        """An operator's step: ``rollouts.advance``, ``unfreeze`` or ``complete``.

        With ``check``, the operator first makes sure that the migration is running (the
        health gate did not freeze it or roll it back), and that no read mismatched and the
        new store never failed (since the fix: a new Migration counts afresh).
        """
        if check:
            status, stats = self.rollouts.status(NAME), self.migration.stats
            if status.status is not Status.RUNNING:
                raise Stopped(f"the migration is {status.status} in {status.stage_name} "
                              f"({status.reason})")  # fmt: skip
            if stats.mismatched or stats.new_errors:
                raise Stopped(f"{stats.mismatched} mismatches and {stats.new_errors} errors "
                              f"of the new store in {self.migration.phase}")  # fmt: skip
        action(NAME, actor="alice", reason=reason)

    def run(self) -> None:
        """The whole story, then the rollout's history."""
        try:
            self.story()
        except Stopped as exc:
            self.problems.append(f"the operator stopped: {exc}")
        self.print_history()

    def story(self) -> None:
        tables, rollouts = self.tables, self.rollouts
        self.serve()
        self.operator(rollouts.advance, "profiles_new created; start dual writes")

        self.serve()
        # Dual writes are on (in every process), so the backfill can start; see backfill().
        copied = backfill(tables, tables.write_new_v1)
        print(f"{stamp(self.clock())}  backfill: {copied:,} rows copied to profiles_new")
        self.operator(rollouts.advance, "backfill done; compare reads")

        self.shadow_read_with_the_bug()
        self.fix()
        self.operator(rollouts.unfreeze, "write_new fixed; profiles_new repaired", check=False)

        self.serve(" (resumed)")
        self.operator(rollouts.advance, "no mismatch since the fix; the new table answers")

        self.serve()
        self.operator(rollouts.advance, "live and clean; stop reading the old table")

        self.serve()
        # The last moment the old table can take over: it must hold the same rows.
        if tables.old_rows() != tables.new_rows():
            raise Stopped("profiles_old and profiles_new differ at the end of rampdown")
        self.operator(rollouts.advance, "the tables agree; stop writing the old table")

        self.serve()
        self.operator(rollouts.complete, "migration done; profiles_old can be dropped")
        self.final_check()

    def shadow_read_with_the_bug(self) -> None:
        """Compared reads find the cut names, and the health gate freezes the migration.

        A frozen migration keeps serving shadow_read: the old table answers, so no user
        sees a cut name. Left alone with more evidence, the gate would roll it back to
        dual_write, just as safe. The demo stops the phase's traffic at the freeze: the
        operator is paged.
        """
        rollout = self.rollouts[NAME]
        tally = self.serve(until=lambda: rollout.state.status is not Status.RUNNING)
        status, stats = self.rollouts.status(NAME), self.migration.stats
        self.check(stats.mismatched > 0, "no read mismatched in shadow_read")
        requests = tally.reads + tally.updates + tally.signups
        print(f"\nthe migration is {status.status} after {requests:,} requests: "
              f"{stats.mismatched} of {stats.compared:,} compared reads mismatched "
              f"({stats.mismatch_rate or 0:.1%})")  # fmt: skip
        print("mismatch samples, one per user (emails redacted):")
        samples = {sample.unit: sample for sample in self.migration.mismatches}
        for unit, sample in list(samples.items())[:3]:
            print(f"  {unit}: old {shown(sample.old)}")
            print(f"  {' ' * len(str(unit))}  new {shown(sample.new)}")
        frozen = [e for e in self.events if e.automatic and e.to_status is Status.FROZEN]
        if status.status is not Status.FROZEN or not frozen:  # nothing to unfreeze
            raise Stopped(f"the health gate did not freeze the migration in shadow_read: it "
                          f"is {status.status} in {status.stage_name}")  # fmt: skip

    def fix(self) -> None:
        """The operator's fix: the corrected write function, and a second backfill.

        The samples show names cut at 24 characters. The corrected write function is
        deployed (here: a new Migration over the same rollout; its counters start at 0),
        then the rows already written wrong are repaired by running the backfill again
        with it. Dual writes are still on, so the first backfill's argument holds.
        """
        tables = self.tables
        print(f"\n{stamp(self.clock())}  fix: write_new no longer cuts names")
        self.migration = build_migration(self.rollouts, tables, tables.write_new)
        old = tables.old_rows()
        wrong = sum(old.get(i) != profile for i, profile in tables.new_rows().items())
        copied = backfill(tables, tables.write_new)
        print(f"{stamp(self.clock())}  repair: backfill again, {copied:,} rows copied "
              f"({wrong} were wrong in profiles_new)")  # fmt: skip

    def final_check(self) -> None:
        """The new table must hold exactly what was written, and nothing else."""
        expected = self.users.expected
        new, old = self.tables.new_rows(), self.tables.old_rows()
        stats = self.migration.stats  # since the fix
        self.check(not stats.mismatched and not stats.new_errors,
                   f"after the fix: {stats.mismatched} mismatches, "
                   f"{stats.new_errors} errors of the new store")  # fmt: skip
        wrong = sorted(i for i in expected.keys() | new.keys() if new.get(i) != expected.get(i))
        behind = sum(old.get(i) != profile for i, profile in expected.items())
        print(f"\nfinal check: profiles_new has {len(new):,} rows, {len(wrong)} differing "
              f"from the {len(expected):,} profiles written; profiles_old, no longer "
              f"written, is {behind} rows behind")  # fmt: skip
        self.check(not wrong, f"profiles_new differs from what was written on {len(wrong)} "
                   f"rows, e.g. user {wrong[:1]}")  # fmt: skip
        self.check(self.rollouts.status(NAME).status is Status.COMPLETE
                   and self.migration.phase is Phase.COMPLETE,
                   "the migration did not complete")  # fmt: skip
        if not self.problems:
            print("final check: OK (profiles_new holds every write)")

    def print_history(self) -> None:
        print(f"\nhistory of {NAME} (newest first):")
        phases = list(Phase)
        for entry in self.rollouts.history(NAME):
            to = phases[entry.to_stage].value if entry.to_stage >= 0 else "0 %"
            why = f": {entry.reason}" if entry.reason else ""
            status = f"[{entry.to_status}]"
            print(f"  {stamp(entry.at)} {entry.action.value:>9} to {to:<11} {status:<10} "
                  f"by {entry.actor}{why}")  # fmt: skip


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number that is at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be at least {minimum} (got {value}): fewer would leave shadow_read "
                "too few users with a long name for the health gate to freeze"
            )
        return value

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, help="the SQLite file to create "
                        "(default: one in a temporary directory)")  # fmt: skip
    parser.add_argument("--units", type=at_least(MIN_PROFILES), default=PROFILES,
                        help=f"profiles at the start, at least {MIN_PROFILES} "
                        f"(default {PROFILES})")  # fmt: skip
    parser.add_argument("--requests", type=at_least(MIN_REQUESTS), default=REQUESTS,
                        help=f"simulated requests per phase, at least {MIN_REQUESTS} "
                        f"(default {REQUESTS})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=SEED, help=f"(default {SEED})")
    args = parser.parse_args()
    if args.db is not None and args.db.exists():
        parser.error(f"{args.db} exists; name a new file")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db if args.db is not None else Path(tmp) / "profiles.db"
        tables = Tables(path)
        try:
            demo = Demo(tables, path, units=args.units, requests=args.requests, seed=args.seed)
            demo.run()
        finally:
            tables.close()
    for problem in demo.problems:
        print(f"FAILED: {problem}")
    if demo.problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
