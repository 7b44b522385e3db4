"""The review store: where it lives, what a decision means, concurrent writers, and the gate's line."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline import triage
from pipeline.cli import app
from pipeline.gate import attach_review, evaluate, markdown
from pipeline.triage import (
    ENV_REVIEW_DB,
    ModelReview,
    ReviewError,
    ReviewStore,
    current_fingerprints,
    mark_state,
    open_for_reading,
    review_db_path,
    summarise,
)
from tests.dashboard.fakes import FAILING, PASSING, write_results

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_the_store_lives_beside_the_results_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_REVIEW_DB, raising=False)
    assert review_db_path(tmp_path / "res") == tmp_path / "res" / "_review.sqlite"
    monkeypatch.setenv(ENV_REVIEW_DB, str(tmp_path / "env.sqlite"))
    assert review_db_path(tmp_path / "res") == tmp_path / "env.sqlite"
    assert review_db_path(tmp_path / "res", tmp_path / "cli.sqlite") == tmp_path / "cli.sqlite"  # the option wins


def test_the_latest_mark_stands_clear_withdraws_and_history_keeps_all(tmp_path):
    s = ReviewStore(tmp_path / "r.sqlite")
    s.mark("image", "m", "a.png", "fp1", "confirmed_cue", reviewer="ann", when=T0)
    s.mark("image", "m", "a.png", "fp1", "label_error", note=" a wolf ", reviewer="bob", when=T0 + timedelta(1))
    s.mark("image", "m", "b.png", "fp1", "fine", reviewer="ann", when=T0)
    s.mark("image", "m", "b.png", "fp1", "clear", reviewer="ann", when=T0 + timedelta(2))
    s.mark("finding", "m", "counterfactual_flip/class:dog", "fp1", "confirmed_cue", reviewer="ann", when=T0)
    cur = s.current()
    assert list(zip(cur.subject, cur.decision, cur.note, cur.reviewer, strict=True)) == [
        ("a.png", "label_error", "a wolf", "bob"), ("counterfactual_flip/class:dog", "confirmed_cue", "", "ann")]
    assert len(s.history()) == 5 and len(s.history(kind="finding")) == 1 and s.history(model="x").empty
    assert s.current(kind="image").subject.tolist() == ["a.png"]


@pytest.mark.parametrize("args, msg", [
    (("picture", "m", "a", "f", "fine"), "review kind 'picture' is not one of image, finding"),
    (("image", "m", "a", "f", "great"), "review decision 'great' is not one of confirmed_cue, label_error"),
    (("image", "m", "a", "f", "note"), "a 'note' decision needs the note's text"),
    (("image", "m", "", "f", "fine"), "review subject must not be empty"),
    (("image", "m", "a", "", "fine"), "review fingerprint must not be empty"),
])
def test_bad_marks_are_refused_by_name(tmp_path, args, msg):
    with pytest.raises(ValueError, match=msg):
        ReviewStore(tmp_path / "r.sqlite").mark(*args)


def test_read_only_stores(tmp_path, monkeypatch):
    assert open_for_reading(tmp_path) is None  # nothing reviewed yet: no file is created by reading
    assert not (tmp_path / "_review.sqlite").exists()
    ReviewStore(tmp_path / "_review.sqlite").mark("image", "m", "a", "f", "fine")
    ro = open_for_reading(tmp_path)
    assert ro is not None and len(ro.current()) == 1
    with pytest.raises(ReviewError, match="opened read-only"):
        ro.mark("image", "m", "a", "f", "fine")
    # a WAL file in a directory we may not write to cannot be opened mode=ro: read it as a snapshot
    real = sqlite3.connect
    seen = []

    def connect(database, *a, **k):
        seen.append(str(database))
        if "mode=ro" in str(database):
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *a, **k)

    monkeypatch.setattr(triage.sqlite3, "connect", connect)
    assert len(open_for_reading(tmp_path).current()) == 1 and "immutable=1" in seen[-1]


def test_unusable_files_are_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ReviewError, match="cannot be written .* set CUEAUDIT_REVIEW_DB"):
        ReviewStore(tmp_path / "file" / "r.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReviewError, match="junk.sqlite"):
        ReviewStore(tmp_path / "junk.sqlite")


def test_mark_state_separates_current_and_older_fingerprints(tmp_path):
    s = ReviewStore(tmp_path / "r.sqlite")
    s.mark("image", "m", "a", "old", "fine", when=T0)
    s.mark("image", "m", "a", "new", "label_error", when=T0)
    s.mark("image", "m", "b", "old", "confirmed_cue", when=T0)
    s.mark("image", "other", "c", "new", "fine", when=T0)
    st = mark_state(s.current(), "m", "new")
    assert st.loc["a", "decision"] == "label_error" and st.loc["a", "older_decision"] == "fine"
    assert pd.isna(st.loc["b", "decision"]) and st.loc["b", "older_fingerprint"] == "old"
    assert "c" not in st.index


def test_summaries_count_the_current_fingerprint_only(tmp_path):
    s = ReviewStore(tmp_path / "r.sqlite")
    for scope in ("class:a", "class:b", "model"):
        s.mark("finding", "m", f"counterfactual_flip/{scope}", "fp", "confirmed_cue")
    s.mark("finding", "m", "background_reliance", "fp", "fine")
    s.mark("image", "m", "x", "fp", "label_error")
    s.mark("image", "m", "y", "old", "confirmed_cue")
    r = summarise(s.current(), {"m": "fp", "n": "fp2"})
    assert r["m"].findings == {"confirmed_cue": 3, "fine": 1} and r["m"].images == {"label_error": 1}
    assert r["m"].confirmed_checks == {"counterfactual_flip": 3} and r["m"].older == 1
    assert r["m"].sentence() == ("3 findings confirmed by review; 1 finding marked fine; images: 1 label error; "
                                 "1 decision made under an older fingerprint (not counted)")
    assert r["n"].empty and r["n"].sentence() == "nothing reviewed"


# ---------------------------------------------------------------------------------------------
# Concurrent reviewers


def _writer(path: str, who: str, n: int, start_at: float) -> int:
    while time.time() < start_at:
        time.sleep(0.001)
    store = ReviewStore(path)
    for i in range(n):
        store.mark("image", "m", f"{who}-{i}", "fp", "fine", reviewer=who)
    return n


def test_concurrent_processes_and_threads_lose_no_write(tmp_path):
    path = str(tmp_path / "r.sqlite")
    ReviewStore(path)
    start_at = time.time() + 3.0  # after the spawned interpreters have imported everything
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        procs = [pool.apply_async(_writer, (path, f"p{k}", 25, start_at)) for k in range(3)]
        threads = [threading.Thread(target=_writer, args=(path, f"t{k}", 25, start_at)) for k in range(3)]
        for t in threads:
            t.start()
        assert [p.get(timeout=120) for p in procs] == [25, 25, 25]
        for t in threads:
            t.join(timeout=120)
    h = ReviewStore(path).history()
    assert len(h) == 150 and h.id.is_unique
    assert sorted(h.subject) == sorted(f"{w}-{i}" for w in ("p0", "p1", "p2", "t0", "t1", "t2") for i in range(25))
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_busy_database_is_retried_not_lost(tmp_path, monkeypatch):
    path = tmp_path / "r.sqlite"
    ReviewStore(path)
    monkeypatch.setattr(triage, "BUSY_TIMEOUT_S", 0.001)  # SQLite gives up at once: our retry loop takes over
    hold = sqlite3.connect(path, isolation_level=None)
    hold.execute("BEGIN IMMEDIATE")  # another writer holds the lock ...
    done = []
    t = threading.Thread(target=lambda: done.append(ReviewStore(path).mark("image", "m", "a", "fp", "fine")))
    t.start()
    time.sleep(0.3)
    assert not done  # ... so the mark waits
    hold.execute("COMMIT")
    t.join(timeout=30)
    assert done and len(ReviewStore(path).history()) == 1


# ---------------------------------------------------------------------------------------------
# The gate reports review, never judges by it


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return write_results(tmp_path_factory.mktemp("triage"), n_per_class=12, broken=False, crafted=False).root


def test_the_gate_markdown_says_what_review_confirmed(results, tmp_path):
    db = tmp_path / "r.sqlite"
    s = ReviewStore(db)
    fps = current_fingerprints(results)
    assert fps == {FAILING: "biased-v1", PASSING: "fair-v2"}
    for scope in ("class:disk", "class:square", "model"):
        s.mark("finding", FAILING, f"counterfactual_flip/{scope}", fps[FAILING], "confirmed_cue")
    s.mark("image", FAILING, "disk/disk_004.png", fps[FAILING], "label_error")
    s.mark("image", PASSING, "disk/disk_001.png", "fair-v1", "fine")  # before the retraining
    v = evaluate(results)
    plain = markdown(v)
    assert attach_review(v, results, db) == db
    md = markdown(v)
    assert [m.status for m in v.models] == [m.status for m in evaluate(results).models]  # never judged
    assert "confirmed by review" not in plain
    assert "(counterfactual_flip, FAIL): " in md and "— confirmed by review (3 findings)" in md
    assert ("- 🔎 Review: 3 findings confirmed by review; images: 1 label error." in md)
    assert f"### `{PASSING}`" in md and "1 decision made under an older fingerprint (not counted)" in md
    assert json.loads(json.dumps(v.to_dict()))["review"][FAILING]["findings"] == {"confirmed_cue": 3}


def test_gate_cli_reads_the_store_beside_the_results_or_the_option(results, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_REVIEW_DB, raising=False)
    runner = CliRunner()
    res = runner.invoke(app, ["gate", str(results), "--review-db", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 2 and "does not exist" in res.output
    db = tmp_path / "r.sqlite"
    ReviewStore(db).mark("finding", FAILING, "counterfactual_flip", "biased-v1", "confirmed_cue")
    md = tmp_path / "gate.md"
    res = runner.invoke(app, ["gate", str(results), "--review-db", str(db), "--markdown", str(md), "-q"])
    assert res.exit_code == 1, res.output  # the biased model still fails
    assert f"review of {FAILING}: 1 finding confirmed by review" in res.output
    assert "1 finding confirmed by review" in md.read_text()
    monkeypatch.setenv(ENV_REVIEW_DB, str(db))
    res = runner.invoke(app, ["gate", str(results), "-q"])
    assert f"review of {FAILING}" in res.output


def test_model_review_round_trips_to_json():
    r = ModelReview("m", "fp", {"fine": 1}, {}, {}, 2)
    assert json.loads(json.dumps(r.to_dict())) == {"model": "m", "fingerprint": "fp", "findings": {"fine": 1},
                                                   "images": {}, "confirmed_checks": {}, "older": 2}
