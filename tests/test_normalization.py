import json

import numpy as np
import pytest

from vce.prep.normalization import apply_calibration, forward, inverse, patient_stats


@pytest.mark.parametrize("method", ["zscore", "sigmoid", "tanh"])
def test_round_trip(method):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 4095, size=(4, 16, 16))
    mu, sd = float(x.mean()), float(x.std())
    y = forward(x, mu, sd, method)
    back = inverse(y, mu, sd, method)
    tol = {"zscore": 1e-3, "sigmoid": 0.05, "tanh": 2.0}[method]  # float32 storage; tanh's 0.01 slope
    np.testing.assert_allclose(back, x, atol=tol)


def test_equations_11_to_13():
    x, mu, sd = np.array([0.0, 100.0, 300.0]), 100.0, 50.0
    z = (x - mu) / sd
    np.testing.assert_allclose(forward(x, mu, sd, "zscore"), z, rtol=1e-6)
    np.testing.assert_allclose(forward(x, mu, sd, "sigmoid"), 1 / (1 + np.exp(-z)), rtol=1e-6)
    np.testing.assert_allclose(forward(x, mu, sd, "tanh"), 0.5 * (np.tanh(0.01 * z) + 1), rtol=1e-6)


def test_inverse_is_finite_at_bounds():
    for m in ("sigmoid", "tanh"):
        assert np.all(np.isfinite(inverse(np.array([0.0, 1.0, -0.5, 1.5]), 100.0, 10.0, m)))


def test_patient_stats_use_body_only():
    s = np.zeros((2, 4, 4))
    s[:, :2] = 10.0
    s[:, :2, :2] = 20.0
    body = s > 0
    mu, sd = patient_stats(s, body)
    assert mu == pytest.approx(15.0) and sd == pytest.approx(5.0)


def test_normalized_store(tiny_normalized, tiny_split):
    params = json.loads((tiny_normalized / "params.json").read_text())
    assert set(params["methods"]) == {"zscore", "sigmoid", "tanh"}
    for m in params["methods"]:
        for s in ("train", "test"):
            a = np.load(tiny_normalized / m / s / "T1C.npy")
            raw = np.load(tiny_split / s / "T1C.npy")
            assert a.shape == raw.shape and np.all(np.isfinite(a))
            if m != "zscore":
                assert a.min() >= 0 and a.max() <= 1
    # stored z-scores of a training patient have mean 0 / sd 1 over its body voxels
    import pandas as pd

    idx = pd.read_csv(tiny_split / "train" / "index.csv")
    pid = idx.patient.iloc[0]
    rows = np.flatnonzero(idx.patient.to_numpy() == pid)
    z = np.load(tiny_normalized / "zscore" / "train" / "T2.npy")[rows]
    body = np.load(tiny_split / "train" / "body.npy")[rows].astype(bool)
    assert z[body].mean() == pytest.approx(0, abs=1e-4) and z[body].std() == pytest.approx(1, abs=1e-4)
    # the calibration predicts T1C statistics from T1/T2 ones
    st = params["patients"][pid]
    mu, sd = apply_calibration(params["calibration"], st)
    assert mu > 0 and sd > 0
    assert abs(mu - st["T1C"]["mu"]) / st["T1C"]["mu"] < 0.5
