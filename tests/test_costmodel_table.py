"""The fitted table cost model, its calibration file, and make_cost_model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pagesim.sim.costmodel import (
    CalibrationError, RooflineCostModel, TableCostModel, fit_table, make_cost_model,
)
from pagesim.sim.plan import StepShapes

META = {"model": "llama-3-8b", "gpu": "h100-80gb", "tp": 1, "block_size": 16, "source": "synthetic"}
DECODE = {"const": 4e-3, "num_tokens": 2e-5, "kv_tokens_read": 5e-8}
MIXED = {"const": 6e-3, "num_tokens": 6e-5, "kv_tokens_read": 4e-8, "attn_pairs": 3e-10}


def synthetic_rows(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """Measured steps that follow DECODE / MIXED exactly (half of each)."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(1, 256, n)
    prefill = np.where(np.arange(n) % 2 == 0, 0, rng.integers(1, 4, n))
    chunk = rng.integers(16, 4096, n)
    tokens = np.where(prefill > 0, seqs + chunk, seqs)
    kv = seqs * rng.integers(16, 2048, n) + np.where(prefill > 0, chunk, 0)
    pairs = np.where(prefill > 0, kv + chunk * (chunk + 1) / 2 * rng.uniform(0.5, 2, n), kv)
    df = pd.DataFrame({"num_seqs": seqs, "num_tokens": tokens, "kv_tokens_read": kv,
                       "attn_pairs": pairs.astype(float), "num_prefill_seqs": prefill})
    lin = lambda c: sum(v * (1.0 if f == "const" else df[f]) for f, v in c.items())  # noqa: E731
    df["measured_s"] = np.where(prefill > 0, lin(MIXED), lin(DECODE))
    return df


def as_shapes(df: pd.DataFrame) -> StepShapes:
    zeros = np.zeros(len(df), dtype=np.int64)
    return StepShapes(
        num_seqs=df["num_seqs"].to_numpy(np.int64), num_tokens=df["num_tokens"].to_numpy(np.int64),
        kv_tokens_read=df["kv_tokens_read"].to_numpy(np.int64),
        attn_pairs=df["attn_pairs"].to_numpy(np.float64),
        num_prefill_seqs=df["num_prefill_seqs"].to_numpy(np.int64),
        copy_blocks=df.get("copy_blocks", pd.Series(zeros)).to_numpy(np.int64),
        swap_blocks=zeros.copy())


def test_fit_recovers_known_coefficients():
    table = fit_table(synthetic_rows(), META)
    for name, truth in (("decode", DECODE), ("mixed", MIXED)):
        r = table.regimes[name]
        assert r.features == tuple(truth)
        np.testing.assert_allclose(r.coef, list(truth.values()), rtol=1e-8)
        assert r.fit["rows"] == 40 and r.fit["max_rel_err"] < 1e-9
    df = synthetic_rows(seed=1)
    np.testing.assert_allclose(table.price(as_shapes(df)), df["measured_s"], rtol=1e-8)


def test_fit_subtracts_copy_cost_and_uses_roofline_block_costs():
    df = synthetic_rows()
    df["copy_blocks"] = np.arange(len(df)) % 3
    roof = RooflineCostModel("llama-3-8b", "h100-80gb", block_size=16)
    df["measured_s"] += df["copy_blocks"] * roof.copy_block_s
    table = fit_table(df, META)
    assert table.copy_block_s == roof.copy_block_s and table.swap_block_s == roof.swap_block_s
    np.testing.assert_allclose(table.regimes["decode"].coef, list(DECODE.values()), rtol=1e-8)
    np.testing.assert_allclose(table.price(as_shapes(df)), df["measured_s"], rtol=1e-8)


def test_save_load_round_trip_is_exact(tmp_path):
    table = fit_table(synthetic_rows(), META)
    path = tmp_path / "cal.json"
    table.save(path)
    loaded = TableCostModel.from_file(path)
    assert loaded.meta == META and loaded.to_dict() == table.to_dict()
    s = as_shapes(synthetic_rows(seed=2))
    assert np.array_equal(loaded.price(s), table.price(s))


def test_price_is_elementwise_and_floored():
    table = fit_table(synthetic_rows(), META)
    s = as_shapes(synthetic_rows(n=30, seed=3))
    whole = table.price(s)
    for i in range(len(s)):
        one = StepShapes(**{f: getattr(s, f)[i:i + 1].copy() for f in StepShapes.__slots__})
        assert table.price(one)[0] == whole[i]
    neg = StepShapes(*(np.array([x]) for x in (1, 1, 0, 0.0, 0, 0, 0)))
    table.regimes["decode"] = type(table.regimes["decode"])(("const",), (-1.0,))
    assert table.price(neg)[0] == table.floor_s > 0


def test_fit_refuses_bad_rows():
    df = synthetic_rows()
    with pytest.raises(CalibrationError, match="attn_pairs"):
        fit_table(df.drop(columns="attn_pairs"), META)
    with pytest.raises(CalibrationError, match="collinear"):
        fit_table(df, META, features={"decode": ("const", "num_tokens", "num_seqs")})
    with pytest.raises(CalibrationError, match="2 rows cannot fit"):
        fit_table(pd.concat([df[df.num_prefill_seqs > 0], df[df.num_prefill_seqs == 0][:2]]), META)
    with pytest.raises(CalibrationError, match="meta needs"):
        fit_table(df, {"model": "llama-3-8b"})
    with pytest.raises(CalibrationError, match="copy_block_s"):
        fit_table(df, {"model": "my-model", "gpu": "h100-80gb", "block_size": 16})
    assert fit_table(df, {"model": "my-model", "gpu": "x", "block_size": 16,
                          "copy_block_s": 1e-6, "swap_block_s": 1e-4}).copy_block_s == 1e-6


def _write(tmp_path, data) -> str:
    path = tmp_path / "cal.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="csv"), "'format' must be"),
    (lambda d: d.update(version=7), "unsupported version 7"),
    (lambda d: d["meta"].pop("gpu"), "'meta' must be an object with keys"),
    (lambda d: d["meta"].update(block_size="16"), "block_size must be a positive integer"),
    (lambda d: d.pop("floor_s"), "'floor_s' must be a finite number"),
    (lambda d: d.update(swap_block_s=-1), "'swap_block_s' must be a finite number"),
    (lambda d: d["regimes"].pop("mixed"), "exactly the keys decode, mixed"),
    (lambda d: d["regimes"]["decode"].update(features=["const", "ctx"]), r"regimes.decode.features"),
    (lambda d: d["regimes"]["mixed"]["coef"].pop(), r"regimes.mixed.coef must be a list of 4"),
    (lambda d: d["regimes"]["mixed"]["coef"].__setitem__(0, "x"), "finite numbers"),
])
def test_malformed_calibration_file_names_file_and_problem(tmp_path, mutate, message):
    data = fit_table(synthetic_rows(), META).to_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(CalibrationError, match=message) as err:
        TableCostModel.from_file(path)
    assert str(err.value).startswith(path)


def test_unreadable_or_invalid_json(tmp_path):
    with pytest.raises(CalibrationError, match=r"line 1, column 2"):
        TableCostModel.from_file(_write(tmp_path, "{oops"))
    with pytest.raises(CalibrationError, match="top level"):
        TableCostModel.from_file(_write(tmp_path, "[1, 2]"))
    with pytest.raises(CalibrationError, match="cannot read"):
        TableCostModel.from_file(tmp_path / "missing.json")


def test_make_cost_model(tmp_path):
    roof = make_cost_model("roofline", "Llama-3-8B", "h100-80gb", tp=2, block_size=32, mbu=0.7)
    assert isinstance(roof, RooflineCostModel) and (roof.tp, roof.block_size, roof.mbu) == (2, 32, 0.7)
    with pytest.raises(ValueError, match="needs a model and a gpu"):
        make_cost_model("roofline", "llama-3-8b")
    path = tmp_path / "cal.json"
    fit_table(synthetic_rows(), META).save(path)
    assert isinstance(make_cost_model(path, "llama-3-8b", "H100-80GB", 1, 16), TableCostModel)
    assert isinstance(make_cost_model(str(path)), TableCostModel)
    with pytest.raises(ValueError, match="block_size=16.*block_size=32"):
        make_cost_model(path, block_size=32)
    with pytest.raises(ValueError, match="model='llama-3-8b'.*model='opt-13b'"):
        make_cost_model(path, "opt-13b")


def test_fit_keeps_summed_time_unbiased_on_noisy_rows():
    """Relative least squares alone sits low on noisy data (it prefers
    under-predicting slow steps); the fit's total-time constraint removes
    that bias, which a simulator summing step times would inherit."""
    from pagesim.sim.costmodel.fit import constrained_lstsq

    df = synthetic_rows(n=400, seed=3)
    noise = np.exp(np.random.default_rng(7).normal(0, 0.3, len(df)))
    df["measured_s"] = df["measured_s"] * noise
    table = fit_table(df, META)
    s = as_shapes(df)
    for name, sel in (("decode", df.num_prefill_seqs == 0), ("mixed", df.num_prefill_seqs > 0)):
        pred = table.price(as_shapes(df[sel]))
        y = df[sel]["measured_s"].to_numpy()
        assert pred.sum() / y.sum() == pytest.approx(1.0, abs=1e-9), name
        assert table.regimes[name].fit["sum_pred_over_sum_measured"] == pytest.approx(1.0, abs=1e-9)
        # the unconstrained relative fit on the same rows is biased low
        feats = table.regimes[name].features
        x = np.column_stack([np.ones(sel.sum()) if f == "const" else df[sel][f].to_numpy(float)
                             for f in feats])
        plain = np.linalg.lstsq(x / y[:, None], np.ones(len(y)), rcond=None)[0]
        assert (x @ plain).sum() / y.sum() < 0.97
        # and the constraint costs little relative accuracy
        coef, rank = constrained_lstsq(x, y)
        assert rank == len(feats)
        assert np.median(np.abs(x @ coef / y - 1)) < 1.2 * np.median(np.abs(x @ plain / y - 1))
    assert len(table.price(s)) == len(df)


def test_version_1_files_still_load_and_refit_needs_samples(tmp_path):
    from pagesim.sim.costmodel import refit

    data = fit_table(synthetic_rows(), META).to_dict()
    data["version"] = 1
    data.pop("samples")
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    old = TableCostModel.from_file(path)
    assert old.samples is None
    with pytest.raises(CalibrationError, match="holds no samples"):
        refit([old])
    new = fit_table(synthetic_rows(), META)
    other = fit_table(synthetic_rows(seed=2), {**META, "block_size": 32})
    with pytest.raises(CalibrationError, match="different settings"):
        refit([new, other])
    pooled = refit([new, fit_table(synthetic_rows(seed=5), META)])
    assert len(pooled.samples) == 160 and pooled.meta["pooled_runs"] == 2


def test_decode_run_is_bit_identical_to_price():
    table = fit_table(synthetic_rows(), META)
    n, ctx0, k = 7, 1234, 50
    times, dts, done = table.decode_run(n, ctx0, k, 10.0, None)
    shapes = StepShapes.decode_stretch(n, ctx0, k)
    assert done == k and dts == table.price(shapes).tolist()
    t = 10.0
    for j, d in enumerate(dts):
        t = t + d
        assert times[j + 1] == t
    _, cut, j = table.decode_run(n, ctx0, k, 10.0, times[5])
    assert j == 5 and cut == dts[:5]  # stops after the step that reaches stop_at
    table.regimes["decode"] = type(table.regimes["decode"])(("const",), (-1.0,))
    assert table.decode_run(1, 1, 1, 0.0, None)[1] == [table.floor_s]


def test_auto_picks_the_matching_calibration_or_roofline(tmp_path, monkeypatch):
    from pagesim.sim.costmodel import calibrations, describe, find_calibration

    old = fit_table(synthetic_rows(), {**META, "date": "2026-01-01"})
    new = fit_table(synthetic_rows(seed=4), {**META, "date": "2026-06-01"})
    other = fit_table(synthetic_rows(), {**META, "block_size": 32})
    for name, t in (("a.json", old), ("b.json", new), ("c.json", other)):
        t.save(tmp_path / name)
    (tmp_path / "broken.json").write_text("{")
    assert find_calibration("llama-3-8b", "h100-80gb", 1, 16, tmp_path).name == "b.json"  # newest
    assert find_calibration("llama-3-8b", "h100-80gb", 1, 32, tmp_path).name == "c.json"
    assert find_calibration("llama-3-8b", "h200", 1, 16, tmp_path) is None
    monkeypatch.setattr(calibrations, "calibration_dir", lambda: tmp_path)
    got = make_cost_model("auto", "llama-3-8b", "h100-80gb", 1, 16)
    assert isinstance(got, TableCostModel) and got.source.endswith("b.json")
    assert describe(got)["kind"] == "table" and describe(got)["date"] == "2026-06-01"
    roof = make_cost_model("auto", "llama-3-8b", "h200", 1, 16)
    assert isinstance(roof, RooflineCostModel) and describe(roof) == {"kind": "roofline"}


def test_shipped_calibration_files_are_found():
    from pagesim.sim.costmodel import find_calibration
    path = find_calibration("llama-3-8b", "h100-80gb", 1, 16)
    assert path is not None and path.name == "llama-3-8b_h100-80gb.json"
