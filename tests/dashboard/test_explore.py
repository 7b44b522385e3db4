"""The explorer's filters, sort and paging, against a row-by-row oracle on the synthetic results."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboard import data
from dashboard.explore import (
    FLIPPED,
    KEPT,
    NOT_COMPUTED,
    NUMERIC,
    Filters,
    model_view,
    page,
    pages,
    review_filter,
    select,
)
from tests.dashboard.fakes import FAILING, PASSING


@pytest.fixture(scope="module")
def frame(fake_results):
    return data.load_frame(fake_results.root)


def oracle(frame: pd.DataFrame, model: str, f: Filters) -> list[str]:
    """The same selection written the obvious way: one Python test per row, then a sort."""
    out = []
    for _, r in frame[frame.model == model].iterrows():
        scored = isinstance(r.error, float) or r.error is None
        if f.rows == "scored" and not scored or f.rows == "errors" and scored:
            continue
        if f.correct == "correct" and not r.correct > 0.5 or f.correct == "wrong" and not r.correct < 0.5:
            continue
        ok = True
        for col, allowed in f.categories:
            if col.endswith("_flip"):
                cf = r[col.replace("_flip", "_pred")]
                v = NOT_COMPUTED if not isinstance(cf, str) or not isinstance(r.pred, str) else (
                    FLIPPED if cf != r.pred else KEPT)
            elif col.startswith("attr:"):
                v = (r.attributes or {}).get(col[5:], "(none)")
            else:
                v = r[col] if isinstance(r[col], str) else "(none)"
            ok &= v in allowed
        for col, lo, hi in f.ranges:
            ok &= isinstance(r[col], float) and not math.isnan(r[col]) and lo <= r[col] <= hi
        if f.image_ids is not None:
            ok &= r.image_id in f.image_ids
        if ok:
            out.append(r)
    key = f.sort

    def sort_key(r):
        v = r[key]
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        return (missing, 0 if missing else (v if not f.descending else _neg(v)))

    return [str(r.image_id) for r in sorted(out, key=sort_key)]


def _neg(v):
    return -v if isinstance(v, float) else _Desc(v)


class _Desc(str):
    def __lt__(self, other):
        return str.__gt__(self, other)


FILTERS = [
    Filters(),
    Filters(correct="wrong"),
    Filters(rows="all", sort="image_id"),
    Filters(rows="errors", sort="image_id", descending=True),
    Filters.make({"label": ["disk", "square"]}, sort="pred_score", descending=True),
    Filters.make({"pred": ["triangle"]}, {"object_share": (0.015, 0.03)}),
    Filters.make({"cf_rand_flip": [FLIPPED]}, sort="object_lift"),
    Filters.make({"attr:source": ["a"], "cf_same_flip": [KEPT]}, {"background_share": (0.6, 0.8)},
                 sort="label"),
    Filters.make({"error_kind": ["decode_error"]}, rows="all", sort="image_id"),
    Filters(image_ids=("disk/disk_000.png", "square/square_004.png", "nope"), sort="image_id"),
]


@pytest.mark.parametrize("f", FILTERS, ids=range(len(FILTERS)))
@pytest.mark.parametrize("model", [FAILING, PASSING])
def test_select_matches_the_row_by_row_oracle(frame, model, f):
    got = [str(x) for x in frame.image_id.to_numpy()[select(model_view(frame, model), f)]]
    assert got == oracle(frame, model, f)


def test_the_planted_cue_shows_in_the_filters(frame):
    v = model_view(frame, FAILING)
    assert len(select(v, Filters())) == 90 and len(select(v, Filters(rows="errors"))) == 2
    # the biased model flips under another class's background on every image; over its own class's
    # background it flips back to the label exactly where the image's colour had misled it
    assert len(select(v, Filters.make({"cf_rand_flip": [FLIPPED]}))) == 90
    assert set(v.options("cf_rand_flip")) == {FLIPPED, NOT_COMPUTED}  # error rows have no composite
    wrong = select(v, Filters(correct="wrong"))
    assert len(wrong) == 18  # exactly the colour-conflicting images
    assert set(select(v, Filters.make({"cf_same_flip": [FLIPPED]}))) == set(wrong)
    worst_first = frame.object_share.to_numpy()[select(v, Filters())]
    assert (np.diff(worst_first) >= 0).all()
    assert v.fingerprint == "biased-v1" and v.attributes == ["source"]
    assert "attr:source" in v.categorical() and "object_share" in v.numeric()
    lo, hi = v.bounds("object_share")
    assert 0 < lo < hi < 0.1


def test_unknown_columns_and_values_are_named():
    with pytest.raises(ValueError, match="Filters.rows must be one of"):
        Filters(rows="some")
    v = model_view(pd.DataFrame({"model": ["m"], "image_id": ["a"], "error": [None], "correct": [1.0],
                                 "pred": ["x"], "label": ["x"], "object_share": [0.5]}), "m")
    with pytest.raises(KeyError, match="unknown column 'nope'"):
        select(v, Filters.make({"nope": ["x"]}))
    with pytest.raises(KeyError, match="sort key 'nope'"):
        select(v, Filters(sort="nope"))
    assert len(select(v, Filters.make({"label": ["not a label"]}))) == 0


def test_paging_covers_every_row_once():
    order = np.arange(100, 125)
    assert pages(25, 12) == 3 and pages(0, 12) == 1
    got = np.concatenate([page(order, p, 12) for p in range(1, 4)])
    np.testing.assert_array_equal(got, order)
    assert len(page(order, 9, 12)) == 0


def test_review_filter_keeps_the_wanted_states(frame):
    order = select(model_view(frame, FAILING), Filters(sort="image_id"))
    ids = list(frame.image_id.to_numpy()[order])
    marks = {"label_error": ids[:2], "fine": [ids[5]], data.OLDER: [ids[7]]}
    def keep(wanted):
        return list(frame.image_id.to_numpy()[review_filter(frame, order, marks, wanted)])

    assert keep([]) == ids
    assert keep(["label_error"]) == ids[:2]
    assert keep(["fine", data.OLDER]) == [ids[5], ids[7]]
    unreviewed = keep(["unreviewed"])
    assert len(unreviewed) == len(ids) - 4 and ids[0] not in unreviewed


def test_all_numeric_columns_are_filterable_on_the_fakes(frame):
    v = model_view(frame, PASSING)
    assert set(v.numeric()) <= set(NUMERIC)
    for col in v.numeric():
        lo, hi = v.bounds(col)
        scored_with_value = int((np.isfinite(v.cols[col]) & v.cols.scored).sum())
        assert len(select(v, Filters.make(ranges={col: (lo, hi)}))) == scored_with_value
