"""The vectorised analysis returns exactly what the row-by-row reference (tests.bench.reference) returns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from bench.aggregate import build_results
from pipeline.analysis import cues, evidence, frame
from pipeline.analysis.cues import StatOptions
from pipeline.analysis.evidence import to_jsonable
from pipeline.schema import map_to_dict, read_results
from tests.bench import reference as ref
from tests.dashboard.fakes import write_results

SO = StatOptions(n_boot=200, min_support=10)


def _same(a: object, b: object) -> bool:
    """Exact equality that treats NaN as equal to NaN and compares arrays by value and dtype."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f")))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def assert_frames_identical(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got.index.equals(want.index)
    for col in want.columns:
        assert got[col].dtype == want[col].dtype, col
        if want[col].dtype == object:
            bad = [i for i, (x, y) in enumerate(zip(got[col], want[col], strict=True)) if not _same(x, y)]
            assert not bad, f"{col}: rows {bad[:5]} differ, e.g. {got[col].iloc[bad[0]]!r} vs {want[col].iloc[bad[0]]!r}"
        else:
            pd.testing.assert_series_equal(got[col], want[col], check_exact=True)


def assert_evidence_identical(got: object, want: object) -> None:
    g, w = to_jsonable(got), to_jsonable(want)
    assert g == w


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 synthetic rows (10 classes: the per-class statistics bootstrap, the overall ones do not)."""
    root, _ = build_results(3000, cache=tmp_path_factory.mktemp("agg"), seed=1)
    return root


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(tmp_path_factory.mktemp("fake"), n_per_class=12).root


@pytest.fixture(scope="module")
def synth_frame(synth_root: Path) -> pd.DataFrame:
    return frame.load_frame(synth_root)


def odd_frame(base: pd.DataFrame) -> pd.DataFrame:
    """Edge cases the arrow path never makes: list colours, non-finite and short colours, missing
    labels, maps with None values and a share the areas lack, attributes on some rows only."""
    d = base.head(400).copy()
    d["bg_color"] = d["bg_color"].astype(object)
    colours = list(d["bg_color"])
    colours[1] = [10.0, 20.0, 30.0]
    colours[2] = np.array([np.nan, 1.0, 2.0], np.float32)
    colours[3] = None
    colours[4] = np.array([1.0, 2.0], np.float32)
    colours[5] = [1, 2, 3]
    d["bg_color"] = pd.Series(colours, index=d.index, dtype=object)
    d.loc[d.index[6:9], "label"] = np.nan
    d.loc[d.index[6:9], "correct"] = np.nan
    areas, shares, attrs = list(d.other_areas), list(d.other_shares), list(d.attributes)
    areas[10], shares[10] = {"keyboard": None, "tree": 0.05}, {"tree": 0.2}
    areas[11], shares[11] = {"keyboard": 0.1}, {}
    for i in range(0, 400, 3):
        attrs[i] = {"source": "a"}
    attrs[12] = {}
    d["other_areas"], d["other_shares"], d["attributes"] = areas, shares, attrs
    return d


# ------------------------------------------------------------------------------------ frame


@pytest.mark.parametrize("which", ["synth", "fake"])
def test_load_frame_equals_reference(which: str, synth_root: Path, fake_root: Path) -> None:
    root = synth_root if which == "synth" else fake_root
    assert_frames_identical(frame.load_frame(root), ref.load_frame(root))
    cols = ["run_id", "model", "image_id", "label", "correct", "other_shares", "attributes", "error"]
    assert_frames_identical(frame.load_frame(root, columns=cols), ref.load_frame(root, columns=cols))


def test_prepare_frame_equals_reference(synth_root: Path) -> None:
    raw = read_results(synth_root, columns=list(frame.ANALYSIS_COLUMNS)).to_pandas()
    got = frame.prepare_frame(raw)
    assert_frames_identical(got, ref.prepare_frame(raw))
    assert got is not raw and isinstance(raw.other_shares.iloc[0], list | type(None))  # input untouched


def test_map_dicts_equals_map_to_dict() -> None:
    t = pa.array([[("a", 1.5), ("b", None)], None, [], [("c", 2.0)], [("a", 3.0), ("a", 4.0)]],
                 pa.map_(pa.string(), pa.float32()))
    for arr in (t, t.slice(1), t.slice(2, 2), pa.chunked_array([t.slice(0, 2), t.slice(2)]),
                pa.chunked_array([], t.type)):
        want = [map_to_dict(v) for v in pa.chunked_array([arr] if isinstance(arr, pa.Array) else arr).to_pandas()]
        assert frame.map_dicts(arr) == want


@pytest.mark.parametrize("values", [
    [True, False, None, True], [True, False], [1.0, np.nan, 0.0], [True, pd.NA, False],
])
def test_nullable_float_equals_row_map(values: list) -> None:
    for s in (pd.Series(values, dtype=object), pd.Series(values)):
        want = s.map(lambda v: np.nan if v is None or v is pd.NA else float(v)).astype(float)
        pd.testing.assert_series_equal(frame.nullable_float(s), want, check_exact=True)
    s = pd.Series(values).astype("boolean") if all(isinstance(v, bool) or v is None or v is pd.NA
                                                   for v in values) else None
    if s is not None:
        want = s.map(lambda v: np.nan if v is None or v is pd.NA else float(v)).astype(float)
        pd.testing.assert_series_equal(frame.nullable_float(s), want, check_exact=True)


# ------------------------------------------------------------------------------------ cues


def test_colour_cue_class_and_null_equal_reference() -> None:
    rng = np.random.default_rng(0)
    colors = rng.random((700, 3))
    labels = np.array(rng.choice(["b", "a", "c", "d"], 700).tolist() + [], dtype=object)
    labels[:3] = "e"  # a class of three
    got, want = cues.colour_cue_class(colors, labels), ref.colour_cue_class(colors, labels)
    assert _same(list(got[0]), list(want[0])) and got[2] == want[2]
    assert list(got[1]) == list(want[1]) and all(_same(got[1][k], want[1][k]) for k in want[1])
    assert cues.colour_null(colors, labels, n_perm=30, seed=3) == ref.colour_null(colors, labels, n_perm=30, seed=3)
    assert (cues.colour_null(colors, labels, n_perm=30, seed=3, max_n=300)
            == ref.colour_null(colors, labels, n_perm=30, seed=3, max_n=300))


def test_bg_colours_matches_the_row_check() -> None:
    cells = np.array([np.float32([1, 2, 3]), None, [4.0, 5.0, 6.0], np.float32([np.inf, 1, 1]), np.nan,
                      np.float32([1, 2]), "abc", (1, 2, 3), np.float64([7, 8, 9])], dtype=object)
    ok, rgb = cues.bg_colours(cells)
    want = [isinstance(c, list | np.ndarray) and len(c) == 3 and bool(np.all(np.isfinite(c))) for c in cells]
    assert ok.tolist() == want
    assert _same(rgb, np.stack([np.asarray(c, dtype=float) for c in cells[ok]]))
    arrays = np.empty(3, dtype=object)
    arrays[:] = [np.float32([1, 2, 3]), None, np.float32([4, 5, 6])]
    ok, rgb = cues.bg_colours(arrays)
    assert ok.tolist() == [True, False, True] and rgb.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("fn", ["background_colour", "cooccurrence", "attribute_gaps", "counterfactual"])
@pytest.mark.parametrize("which", ["synth", "odd", "small", "fake"])
def test_cue_analyses_equal_reference(fn: str, which: str, synth_frame: pd.DataFrame, fake_root: Path) -> None:
    df = {"synth": lambda: synth_frame, "odd": lambda: odd_frame(synth_frame),
          "small": lambda: synth_frame.iloc[::37], "fake": lambda: frame.load_frame(fake_root)}[which]()
    for so in (SO, StatOptions(n_boot=50, min_support=3, seed=5, conf=0.9)):
        assert_evidence_identical(getattr(cues, fn)(df, so), getattr(ref, fn)(df, so))
    if fn == "cooccurrence":
        for min_n in (1, 5, 50):
            assert cues.associations(df, min_n) == ref.associations(df, min_n)
            assert list(cues.associations(df, min_n)) == list(ref.associations(df, min_n))  # order too


def test_attribute_gaps_named_attributes_equal_reference(synth_frame: pd.DataFrame) -> None:
    for attrs in (["source"], ["cue_aligned", "missing"]):
        got, want = cues.attribute_gaps(synth_frame, SO, attrs), ref.attribute_gaps(synth_frame, SO, attrs)
        assert_evidence_identical(got, want)


def test_empty_and_unusable_frames_equal_reference(synth_frame: pd.DataFrame) -> None:
    empty = synth_frame.iloc[:0]
    errors = synth_frame[~synth_frame.scored]
    no_maps = synth_frame.assign(other_areas=[{}] * len(synth_frame), other_shares=[{}] * len(synth_frame))
    for df in (empty, errors, no_maps, synth_frame.drop(columns=["cf_rand_pred"])):
        for fn in ("background_colour", "cooccurrence", "attribute_gaps", "counterfactual"):
            assert_evidence_identical(getattr(cues, fn)(df, SO), getattr(ref, fn)(df, SO))


# ------------------------------------------------------------------------------------ evidence


@pytest.mark.parametrize("which", ["synth", "odd", "fake"])
def test_analyse_equals_reference(which: str, synth_frame: pd.DataFrame, fake_root: Path) -> None:
    df = {"synth": synth_frame, "odd": odd_frame(synth_frame) if which == "odd" else None,
          "fake": frame.load_frame(fake_root) if which == "fake" else None}[which]
    assert_evidence_identical(evidence.analyse(df, SO), ref.analyse(df, SO))
    for m in df.model.dropna().unique():
        g = df[df.model == m]
        assert_evidence_identical(evidence.group_stats("x", g, SO), ref.group_stats("x", g, SO))


def test_analyse_does_not_modify_the_frame(synth_frame: pd.DataFrame) -> None:
    before = synth_frame.copy()
    evidence.analyse(synth_frame, SO)
    assert_frames_identical(synth_frame, before)
