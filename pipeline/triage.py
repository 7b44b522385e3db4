"""Reviewers' decisions on images and findings, kept in SQLite beside the results.

A decision marks one *subject* of one model, audited with one model fingerprint: an image
(``kind="image"``, subject = ``image_id``) or a finding (``kind="finding"``, subject = ``<check>`` for a
whole check or ``<check>/<scope>`` for one of its findings, e.g. ``counterfactual_flip/class:dog``).
Decisions are ``confirmed_cue``, ``label_error``, ``fine`` or ``note`` (free text only); ``clear``
withdraws the current one.

The table is an append-only log: a mark inserts a row and never updates one, so concurrent
reviewers cannot overwrite each other (the later mark of the same subject wins, and the history
stays). Each write is its own ``BEGIN IMMEDIATE`` transaction in WAL mode (readers never block the
writer), with SQLite's busy timeout and a bounded retry on ``database is locked``. WAL needs a local
filesystem (SQLite's documentation: not NFS/SMB, not object storage).

Where the database lives is a function of the results directory, ``<results>/_review.sqlite``,
unless ``CUEAUDIT_REVIEW_DB`` (or an explicit path: ``--review-db``) says otherwise, e.g. for results
on a read-only mount. Imports neither torch nor Ray: the gate reads it in a slim CI image.

>>> store = ReviewStore(review_db_path("results"))                        # doctest: +SKIP
>>> store.mark("image", "resnet50", "dog/001.jpg", "fp123", "label_error", note="a wolf")  # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd

from common.storage import is_uri
from pipeline.schema import read_results, read_runs

log = logging.getLogger(__name__)

DB_NAME = "_review.sqlite"
ENV_REVIEW_DB = "CUEAUDIT_REVIEW_DB"
KINDS = ("image", "finding")
DECISIONS = ("confirmed_cue", "label_error", "fine", "note")
CLEAR = "clear"
TITLES = {"confirmed_cue": "confirmed cue", "label_error": "label error", "fine": "fine", "note": "note",
          CLEAR: "cleared"}
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
RETRIES = 8
T = TypeVar("T")
COLUMNS = ["id", "kind", "model", "subject", "fingerprint", "decision", "note", "reviewer", "decided_at"]

_DDL = f"""
CREATE TABLE IF NOT EXISTS decisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in KINDS)})),
    model       TEXT NOT NULL,
    subject     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ({", ".join(repr(d) for d in (*DECISIONS, CLEAR))})),
    note        TEXT NOT NULL DEFAULT '',
    reviewer    TEXT NOT NULL DEFAULT '',
    decided_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_subject ON decisions (model, kind, subject, fingerprint, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


class ReviewError(ValueError):
    """A review database that cannot be used (names the file and the problem)."""


def review_db_path(results: str | os.PathLike[str], override: str | os.PathLike[str] | None = None) -> Path:
    """Where the decisions on ``results`` are kept: ``override``, else ``$CUEAUDIT_REVIEW_DB``, else
    ``<results>/_review.sqlite`` (for results on an object store: a file per results URI under
    ``~/.cache/cueaudit/review/``)."""
    chosen = override or os.environ.get(ENV_REVIEW_DB)
    if chosen:
        return Path(chosen).expanduser()
    if is_uri(str(results)):
        # SQLite needs a local file (locks, WAL): decisions on object-store results are kept in the
        # user's cache, one file per results URI, unless a shared location is given.
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cueaudit" / "review"
        return cache / (re.sub(r"[^A-Za-z0-9._-]+", "_", str(results)).strip("_") + ".sqlite")
    return Path(results) / DB_NAME


def finding_subject(check: str, scope: str | None = None) -> str:
    """The subject of a whole check (``scope=None``) or of one of its findings."""
    return check if not scope else f"{check}/{scope}"


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in a container without /etc/passwd entry
        return ""


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class ReviewStore:
    """The decisions of one results directory (see the module docstring).

    ``readonly`` opens an existing file without ever writing (the gate; results on a read-only
    mount); a missing file then reads as empty.
    """

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            self._create()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            try:
                con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
                con.execute("SELECT 1 FROM meta LIMIT 1")
                return con
            except sqlite3.OperationalError:
                # A WAL database in a read-only directory cannot create its -shm file; read it as a
                # snapshot instead (SQLite's immutable=1: safe because nobody can write there).
                uri = f"{self.path.resolve().as_uri()}?immutable=1"
                return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return con

    def _create(self) -> None:
        def create(con: sqlite3.Connection) -> str:
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            con.executescript(_DDL)
            return str(mode)

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = self._retry(create)
        except (sqlite3.OperationalError, OSError) as e:
            raise ReviewError(
                f"review database {str(self.path)!r} cannot be written ({e}); set {ENV_REVIEW_DB} "
                "(or --review-db) to a writable path, e.g. for results on a read-only mount") from e
        except sqlite3.DatabaseError as e:
            raise ReviewError(f"review database {str(self.path)!r} is not an SQLite file: {e}") from e
        if mode.lower() != "wal":
            log.warning("review database %s: journal mode %s (WAL unavailable on this filesystem?)", self.path, mode)

    def _retry(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)``, retried with a growing, jittered pause while another writer holds the lock
        (on top of SQLite's own busy timeout)."""
        if self.readonly:
            raise ReviewError(f"review database {str(self.path)!r} was opened read-only")
        delay = 0.05
        for attempt in range(RETRIES + 1):
            try:
                with closing(self._connect(False)) as con:
                    return fn(con)
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise
                if attempt == RETRIES:
                    raise ReviewError(f"review database {str(self.path)!r} stayed locked by another writer "
                                      f"through {RETRIES} retries: {e}") from e
                log.info("review database %s busy (%s); retry %d", self.path, e, attempt + 1)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    # -- writing -------------------------------------------------------------------------------

    def mark(self, kind: str, model: str, subject: str, fingerprint: str, decision: str, note: str = "",
             reviewer: str | None = None, when: datetime | None = None) -> int:
        """Record a decision; returns its id. ``decision="clear"`` withdraws the current one."""
        if kind not in KINDS:
            raise ValueError(f"review kind {kind!r} is not one of {', '.join(KINDS)}")
        if decision not in (*DECISIONS, CLEAR):
            raise ValueError(f"review decision {decision!r} is not one of {', '.join((*DECISIONS, CLEAR))}")
        if decision == "note" and not note.strip():
            raise ValueError("a 'note' decision needs the note's text")
        for name, v in (("model", model), ("subject", subject), ("fingerprint", fingerprint)):
            if not v:
                raise ValueError(f"review {name} must not be empty")
        at = (when or datetime.now(UTC)).isoformat(timespec="milliseconds")
        row = (kind, model, subject, fingerprint, decision, note.strip(),
               default_reviewer() if reviewer is None else reviewer, at)

        def insert(con: sqlite3.Connection) -> int:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read
            try:
                cur = con.execute("INSERT INTO decisions (kind, model, subject, fingerprint, decision, note, "
                                  "reviewer, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            return int(cur.lastrowid or 0)

        return self._retry(insert)

    # -- reading -------------------------------------------------------------------------------

    def history(self, model: str | None = None, kind: str | None = None) -> pd.DataFrame:
        """Every decision ever recorded (oldest first), optionally of one model / kind."""
        if self.readonly and not self.path.exists():
            return pd.DataFrame(columns=COLUMNS)
        where, args = [], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        try:
            with closing(self._connect(self.readonly)) as con:
                rows = con.execute(sql + " ORDER BY id", args).fetchall()
        except sqlite3.DatabaseError as e:
            raise ReviewError(f"review database {str(self.path)!r} cannot be read: {e}") from e
        return pd.DataFrame(rows, columns=COLUMNS)

    def current(self, model: str | None = None, kind: str | None = None) -> pd.DataFrame:
        """The standing decision per (kind, model, subject, fingerprint): the latest, unless cleared."""
        h = self.history(model, kind)
        if h.empty:
            return h
        last = h.drop_duplicates(["kind", "model", "subject", "fingerprint"], keep="last")
        return last[last.decision != CLEAR].reset_index(drop=True)


def open_for_reading(results: str | os.PathLike[str], override: str | os.PathLike[str] | None = None
                     ) -> ReviewStore | None:
    """The store of ``results`` read-only, or None when no decision was ever recorded there."""
    path = review_db_path(results, override)
    return ReviewStore(path, readonly=True) if path.is_file() else None


def current_fingerprints(results: str | os.PathLike[str]) -> dict[str, str]:
    """model -> the fingerprint of its latest run (what :func:`pipeline.schema.read_results` calls
    current), from the run records; from the rows when there are none."""
    latest: dict[str, str] = {}
    for r in read_runs(results):
        for m, mr in r.models.items():
            latest[m] = mr.fingerprint
    if latest:
        return latest
    t = read_results(results, columns=["model", "model_fingerprint"], current_only=False)
    return fingerprints_of(t.to_pandas())


def fingerprints_of(frame: pd.DataFrame) -> dict[str, str]:
    """model -> its most frequent fingerprint among ``frame``'s rows (current rows hold one)."""
    if frame.empty:
        return {}
    counts = frame.groupby(["model", "model_fingerprint"], observed=True).size().sort_values(ascending=False)
    out: dict[str, str] = {}
    for m, fp in counts.index:
        out.setdefault(str(m), str(fp))
    return out


def mark_state(decisions: pd.DataFrame, model: str, fingerprint: str, kind: str = "image") -> pd.DataFrame:
    """Per subject of ``model``: its decision under ``fingerprint`` (``decision``, ``note``, ``reviewer``,
    ``decided_at``) and, where there is none, the latest under an older fingerprint (``older_*``).

    ``decisions`` is :meth:`ReviewStore.current`; the result is indexed by subject.
    """
    d = decisions[(decisions.model == model) & (decisions.kind == kind)]
    now = d[d.fingerprint == fingerprint].set_index("subject")[["decision", "note", "reviewer", "decided_at"]]
    old = d[d.fingerprint != fingerprint].drop_duplicates("subject", keep="last").set_index("subject")
    old = old[["decision", "fingerprint", "decided_at"]].add_prefix("older_")
    return now.join(old, how="outer")


@dataclass
class ModelReview:
    """What review says about one model's current fingerprint (the gate's Markdown line)."""

    model: str
    fingerprint: str
    findings: dict[str, int] = field(default_factory=dict)  # decision -> findings
    images: dict[str, int] = field(default_factory=dict)  # decision -> images
    confirmed_checks: dict[str, int] = field(default_factory=dict)  # check -> findings confirmed as cues
    older: int = 0  # decisions under another fingerprint (not counted above)

    @property
    def empty(self) -> bool:
        return not (self.findings or self.images or self.older)

    def sentence(self) -> str:
        """E.g. ``3 findings confirmed by review, 1 marked fine; images: 2 confirmed cue, 1 label error``."""
        parts = []
        conf = self.findings.get("confirmed_cue", 0)
        if conf:
            parts.append(f"{conf} finding{'s' if conf != 1 else ''} confirmed by review")
        for d in ("fine", "label_error", "note"):
            n = self.findings.get(d, 0)
            if n:
                parts.append(f"{n} finding{'s' if n != 1 else ''} marked {TITLES[d]}")
        if self.images:
            parts.append("images: " + ", ".join(f"{n} {TITLES[d]}" for d, n in sorted(self.images.items())))
        if self.older:
            parts.append(f"{self.older} decision{'s' if self.older != 1 else ''} made under an older "
                         "fingerprint (not counted)")
        return "; ".join(parts) or "nothing reviewed"

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "fingerprint": self.fingerprint, "findings": self.findings,
                "images": self.images, "confirmed_checks": self.confirmed_checks, "older": self.older}


def summarise(decisions: pd.DataFrame, fingerprints: Mapping[str, str]) -> dict[str, ModelReview]:
    """``model -> ModelReview`` for each model of ``fingerprints`` (model -> current fingerprint)."""
    out = {}
    for model, fp in fingerprints.items():
        d = decisions[decisions.model == model]
        cur, old = d[d.fingerprint == fp], d[d.fingerprint != fp]
        f, i = cur[cur.kind == "finding"], cur[cur.kind == "image"]
        checks = f[f.decision == "confirmed_cue"].subject.str.split("/", n=1).str[0]
        out[model] = ModelReview(model, fp, _counts(f.decision), _counts(i.decision), _counts(checks),
                                 len(old))
    return out


def _counts(values: Iterable[str]) -> dict[str, int]:
    return {str(k): v for k, v in pd.Series(list(values), dtype=object).value_counts().sort_index().items()}
