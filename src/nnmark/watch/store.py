"""The watch's state folder: one SQLite database (WAL), one transaction per finished target-round.

Tables: ``rounds`` (a target's round: times, duration, exit status, error, queries, its report as JSON),
``verdicts`` (per round and key: state, decision, statistic, queries, note), ``queries`` (which query indices of
which key went to which target in which round), ``events`` (state changes) and ``states`` (per target x key the
last announced state, the last observed one and the run of consecutive ``unreachable`` rounds), ``exposed``
(every (target, key, index) ever sent, once each: an endpoint that logged a query knows it for ever) and
``successes`` (each target's last round that decided every key). A kill loses at most the round in flight: a
round is written whole or not at all. A state folder of an older nnmark, without the last two, gets them filled
from its rounds when opened.

With a retention, each round written also deletes, in its transaction, the rounds (with their verdicts and
queries) and events older than it, at most ``PRUNE_LIMIT`` of each; ``exposed`` and ``successes`` are kept.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from nnmark.errors import NnmarkError

DB_NAME = "watch.sqlite"
DECIDED = ("ok", "failed")
"""States in which a key's check ran to a decision."""
PRUNE_LIMIT = 100
"""The most rounds, and the most events, one round's write deletes: bounded work per round, and a backlog (a
retention newly set on an old state folder) drains a hundred times faster than rows come."""
ALL_DECIDED = ("EXISTS (SELECT 1 FROM verdicts v WHERE v.round_id=r.id) AND NOT EXISTS (SELECT 1 FROM verdicts v "
               f"WHERE v.round_id=r.id AND v.state NOT IN {DECIDED!r})")
"""SQL: the round ``r`` decided every key (each ``ok`` or ``failed``)."""
OLD_ROUNDS = "SELECT id FROM rounds WHERE finished < :cutoff ORDER BY finished LIMIT :limit"
SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds(id INTEGER PRIMARY KEY, target TEXT NOT NULL, started REAL NOT NULL,
  finished REAL NOT NULL, duration_s REAL NOT NULL, status INTEGER NOT NULL, error TEXT NOT NULL,
  queries INTEGER NOT NULL, report TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rounds_target ON rounds(target, finished);
CREATE TABLE IF NOT EXISTS verdicts(round_id INTEGER NOT NULL REFERENCES rounds(id), key TEXT NOT NULL,
  key_sha256 TEXT NOT NULL, state TEXT NOT NULL, decision TEXT NOT NULL, statistic_name TEXT NOT NULL,
  statistic REAL, queries INTEGER NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries(round_id INTEGER NOT NULL REFERENCES rounds(id), target TEXT NOT NULL,
  key_sha256 TEXT NOT NULL, idx INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS queries_key ON queries(target, key_sha256);
CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, time REAL NOT NULL, target TEXT NOT NULL,
  key TEXT NOT NULL, old TEXT, new TEXT NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states(target TEXT NOT NULL, key TEXT NOT NULL, announced TEXT, observed TEXT NOT NULL,
  streak INTEGER NOT NULL, PRIMARY KEY(target, key));
CREATE INDEX IF NOT EXISTS rounds_finished ON rounds(finished);
CREATE INDEX IF NOT EXISTS verdicts_round ON verdicts(round_id);
CREATE INDEX IF NOT EXISTS queries_round ON queries(round_id);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS exposed(target TEXT NOT NULL, key_sha256 TEXT NOT NULL, idx INTEGER NOT NULL,
  PRIMARY KEY(target, key_sha256, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS successes(target TEXT PRIMARY KEY, finished REAL NOT NULL);
"""
BACKFILL = f"""
INSERT OR IGNORE INTO exposed SELECT target, key_sha256, idx FROM queries WHERE NOT EXISTS (SELECT 1 FROM exposed);
INSERT OR IGNORE INTO successes SELECT target, MAX(finished) FROM rounds r WHERE NOT EXISTS (SELECT 1 FROM successes)
  AND {ALL_DECIDED} GROUP BY target;
"""
"""SQL: ``exposed`` and ``successes`` of a state folder written before them (both empty), from its rounds."""


class StoreError(NnmarkError):
    """The state folder cannot be opened, read or written."""


@dataclass(frozen=True)
class KeyState:
    """A target x key's standing: the state last announced (an event), the one last observed, and how many
    consecutive rounds observed ``unreachable``."""

    announced: str | None = None
    observed: str | None = None
    streak: int = 0


@dataclass(frozen=True)
class Verdict:
    """One key's row of a round."""

    key: str
    key_sha256: str
    state: str
    decision: str
    statistic_name: str
    statistic: float | None
    queries: int
    note: str


@dataclass(frozen=True)
class Event:
    """A state change of a target x key (``old`` None: the first state seen)."""

    time: float
    target: str
    key: str
    old: str | None
    new: str
    note: str = ""


@dataclass
class Round:
    """A finished target-round, as written in one transaction."""

    target: str
    started: float
    finished: float
    status: int
    error: str
    report: dict
    verdicts: list[Verdict]
    sent: dict[str, list[int]]
    """key sha256 -> query indices sent this round."""
    states: dict[str, KeyState]
    """key -> its standing after this round."""
    events: list[Event]


class Store:
    """The database in ``folder`` (created if missing), safe to use from several threads (one lock). ``retention``:
    seconds after which a round and an event are deleted (None: kept for ever)."""

    def __init__(self, folder: str | Path, retention: float | None = None):
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path / DB_NAME, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA + BACKFILL)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"state folder {folder}: {e}") from None
        self.path = path / DB_NAME
        self.retention = retention
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the database; later writes are dropped (a round abandoned at shutdown)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: closed")
            return self._db.execute(sql, args).fetchall()

    def write_round(self, r: Round) -> int | None:
        """Write a finished round and everything it changed in one transaction; its id, or None once closed."""
        with self._lock:
            if self._closed:
                return None
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                rid = db.execute("INSERT INTO rounds(target, started, finished, duration_s, status, error, queries, "
                                 "report) VALUES (?,?,?,?,?,?,?,?)",
                                 (r.target, r.started, r.finished, r.finished - r.started, r.status, r.error,
                                  sum(v.queries for v in r.verdicts), json.dumps(r.report))).lastrowid
                db.executemany("INSERT INTO verdicts VALUES (?,?,?,?,?,?,?,?,?)",
                               [(rid, v.key, v.key_sha256, v.state, v.decision, v.statistic_name, v.statistic,
                                 v.queries, v.note) for v in r.verdicts])
                sent = [(r.target, sha, i) for sha, idx in r.sent.items() for i in idx]
                db.executemany("INSERT INTO queries VALUES (?,?,?,?)", [(rid, *row) for row in sent])
                db.executemany("INSERT OR IGNORE INTO exposed VALUES (?,?,?)", sent)
                db.executemany("INSERT INTO events(time, target, key, old, new, note) VALUES (?,?,?,?,?,?)",
                               [(e.time, e.target, e.key, e.old, e.new, e.note) for e in r.events])
                db.executemany("INSERT OR REPLACE INTO states VALUES (?,?,?,?,?)",
                               [(r.target, key, s.announced, s.observed, s.streak) for key, s in r.states.items()])
                db.execute(f"INSERT OR REPLACE INTO successes SELECT target, finished FROM rounds r WHERE id=? AND "
                           f"{ALL_DECIDED}", (rid,))
                if self.retention is not None:
                    self._prune(r.finished - self.retention)
                db.execute("COMMIT")
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: cannot write a round: {e}") from None
            return rid

    def _prune(self, cutoff: float) -> None:
        """Delete up to ``PRUNE_LIMIT`` rounds (their verdicts and queries) and events from before ``cutoff``
        (inside the caller's transaction)."""
        bound = {"cutoff": cutoff, "limit": PRUNE_LIMIT}
        for table in ("queries", "verdicts"):
            self._db.execute(f"DELETE FROM {table} WHERE round_id IN ({OLD_ROUNDS})", bound)
        self._db.execute(f"DELETE FROM rounds WHERE id IN ({OLD_ROUNDS})", bound)
        self._db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < :cutoff ORDER BY time "
                         "LIMIT :limit)", bound)

    def states(self, target: str) -> dict[str, KeyState]:
        """Each key's standing on ``target``."""
        return {key: KeyState(a, o, s) for key, a, o, s in
                self._read("SELECT key, announced, observed, streak FROM states WHERE target=?", (target,))}

    def last_finished(self, target: str) -> float | None:
        """When ``target``'s last round finished (time.time()), or None."""
        return self._read("SELECT MAX(finished) FROM rounds WHERE target=?", (target,))[0][0]

    def last_success(self, target: str) -> float | None:
        """When a round of ``target`` last decided every key (each ``ok`` or ``failed``), or None (kept when the
        round itself is deleted)."""
        found = self._read("SELECT finished FROM successes WHERE target=?", (target,))
        return found[0][0] if found else None

    def exposed(self, target: str, key_sha256: str) -> set[int]:
        """The distinct query indices of a key ever sent to ``target`` (of deleted rounds too)."""
        return {i for (i,) in self._read("SELECT idx FROM exposed WHERE target=? AND key_sha256=?",
                                         (target, key_sha256))}

    def latest_reports(self) -> list[dict]:
        """The report (JSON) of each target's latest round, by target name."""
        rows = self._read("SELECT report FROM rounds WHERE id IN (SELECT MAX(id) FROM rounds GROUP BY target) "
                          "ORDER BY target")
        return [json.loads(report) for (report,) in rows]

    def events(self, target: str | None = None) -> list[Event]:
        """The events, oldest first (of one target, or all)."""
        sql = "SELECT time, target, key, old, new, note FROM events"
        rows = (self._read(sql + " WHERE target=? ORDER BY id", (target,)) if target
                else self._read(sql + " ORDER BY id"))
        return [Event(*row) for row in rows]

    def rounds(self, target: str | None = None) -> int:
        """How many rounds were written (of one target, or all)."""
        if target:
            return self._read("SELECT COUNT(*) FROM rounds WHERE target=?", (target,))[0][0]
        return self._read("SELECT COUNT(*) FROM rounds")[0][0]

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ("ok" when sound)."""
        return self._read("PRAGMA integrity_check")[0][0]
