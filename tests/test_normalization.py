import json

import numpy as np
import pytest

from vce.prep.normalization import apply_calibration, forward, inverse, patient_stats


@pytest.mark.parametrize("method", ["zscore", "sigmoid", "tanh", "tanh_f1"])
def test_round_trip(method):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 4095, size=(4, 16, 16))
    mu, sd = float(x.mean()), float(x.std())
    y = forward(x, mu, sd, method)
    back = inverse(y, mu, sd, method)
    tol = {"zscore": 1e-3, "sigmoid": 0.05, "tanh": 2.0, "tanh_f1": 0.1}[method]  # float32 storage; tanh's 0.01 slope
    np.testing.assert_allclose(back, x, atol=tol)


def test_equations_11_to_13():
    x, mu, sd = np.array([0.0, 100.0, 300.0]), 100.0, 50.0
    z = (x - mu) / sd
    np.testing.assert_allclose(forward(x, mu, sd, "zscore"), z, rtol=1e-6)
    np.testing.assert_allclose(forward(x, mu, sd, "sigmoid"), 1 / (1 + np.exp(-z)), rtol=1e-6)
    np.testing.assert_allclose(forward(x, mu, sd, "tanh"), 0.5 * (np.tanh(0.01 * z) + 1), rtol=1e-6)
    np.testing.assert_allclose(forward(x, mu, sd, "tanh_f1"), 0.5 * (np.tanh(z) + 1), rtol=1e-6)


@pytest.mark.parametrize("method", ["zscore", "sigmoid", "tanh", "tanh_f1"])
def test_pg_eps_follows_the_normalisation_slope(method):
    """pg_eps_for: eps in patient-sd units times d forward / d z at the mean, checked against a
    central difference of forward itself; "none" leaves eps as given."""
    from vce.losses import NORMALIZATION_SLOPES, pg_eps_for

    slope = NORMALIZATION_SLOPES.get

    mu, sd, h = 500.0, 100.0, 1e-3
    numeric = (forward(np.array([mu + h * sd]), mu, sd, method).astype(np.float64)
               - forward(np.array([mu - h * sd]), mu, sd, method)) / (2 * h)
    np.testing.assert_allclose(slope(method), numeric[0], rtol=2e-2)
    assert pg_eps_for(method, 4e-3) == pytest.approx(4e-3 * slope(method))
    assert pg_eps_for(method, 4e-3, "none") == 4e-3
    with pytest.raises(ValueError):
        pg_eps_for(method, 4e-3, "other")
    assert set(NORMALIZATION_SLOPES) == set(__import__('vce.config', fromlist=['x']).NORMALIZATIONS)


def test_pg_eps_keeps_the_sigmoid_variants_and_scales_tanh():
    """params.yaml: the sigmoid variants keep eq. 2's eps = 1e-3; eq. 13's tanh gets 2e-5 (its
    body spans ~0.03, where 1e-3 would exceed most real gradients)."""
    from conftest import ROOT
    from vce.config import load_config
    from vce.losses import effective_pg_eps

    cfg = load_config(ROOT / "params.yaml", "demo")
    assert effective_pg_eps(cfg.variant("pgmgvce_main"), cfg.train) == pytest.approx(1e-3)
    assert effective_pg_eps(cfg.variant("norm_tanh"), cfg.train) == pytest.approx(2e-5)


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
    assert set(params["methods"]) == {"zscore", "sigmoid", "tanh", "tanh_f1"}
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


# ------------------------------------------------------------------------------------------------
# round trip at float precision, including extreme values


@pytest.mark.parametrize("method", ["zscore", "sigmoid", "tanh"])
def test_round_trip_float_precision(method):
    """forward stores float32; inverse must lose no more than that rounding implies.

    With y = f(z) rounded to float32 (|dy| <= ulp(y) / 2), the error of x = mu + sd z is
    sd |dy| / f'(z) plus the float32 rounding of x itself.
    """
    mu, sd = 1234.5, 321.0
    z = np.concatenate([np.linspace(-8.0, 8.0, 4001), [-12.0, 12.0]])  # 8 sd: far beyond any body voxel
    x = mu + sd * z
    y = forward(x, mu, sd, method)
    assert y.dtype == np.float32
    back = inverse(y, mu, sd, method).astype(np.float64)
    if method == "zscore":
        dydz = np.ones_like(z)
    elif method == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        dydz = s * (1 - s)
    else:
        dydz = 0.5 * 0.01 * (1 - np.tanh(0.01 * z) ** 2)
    ulp_y = np.spacing(np.abs(y).astype(np.float32)).astype(np.float64)
    bound = 1.01 * sd * 0.5 * ulp_y / dydz + np.spacing(np.abs(x).astype(np.float32)) + 1e-9
    err = np.abs(back - x)
    assert np.all(err <= bound), (method, float((err / bound).max()), float(z[np.argmax(err / bound)]))
    # in the tissue range (|z| <= 3) the round trip is well below one 12-bit grey level
    assert err[np.abs(z) <= 3].max() < 0.1
    # and in float64 the inverse is exact to rounding
    y64 = {"zscore": z, "sigmoid": 1 / (1 + np.exp(-z)), "tanh": 0.5 * (np.tanh(0.01 * z) + 1)}[method]
    np.testing.assert_allclose(inverse(y64, mu, sd, method), x.astype(np.float32), rtol=2e-7, atol=1e-3)


@pytest.mark.parametrize("method", ["sigmoid", "tanh"])
def test_inverse_clips_to_known_saturation(method):
    """y outside (0, 1) (a generator overshoot) maps to the clip values, monotonically."""
    mu, sd, c = 100.0, 10.0, 1e-6
    lo, hi = inverse(np.array([-0.5, 0.0, 1.0, 1.5]), mu, sd, method)[[0, 1]], inverse(np.array([1.0, 1.5]), mu, sd, method)
    zmax = np.log((1 - c) / c) if method == "sigmoid" else np.arctanh(1 - 2 * c) / 0.01
    np.testing.assert_allclose(hi, mu + sd * zmax, rtol=1e-6)
    np.testing.assert_allclose(lo, mu - sd * zmax, rtol=1e-6)
    y = np.linspace(-0.1, 1.1, 1001)
    assert np.all(np.diff(inverse(y, mu, sd, method)) >= 0)


# ------------------------------------------------------------------------------------------------
# calibration error report


def _stats(mu1, sd1, mu2, sd2, muc, sdc):
    return {"T1": {"mu": mu1, "sd": sd1}, "T2": {"mu": mu2, "sd": sd2}, "T1C": {"mu": muc, "sd": sdc}}


def test_calibration_report_is_out_of_sample():
    from vce.prep.normalization import calibration_report

    rng = np.random.default_rng(0)
    stats = {}
    for i in range(12):
        f = rng.uniform(500, 1500, 4)
        stats[f"P{i:02d}"] = _stats(*f, 0.8 * f[0] + 0.3 * f[2] + 20.0, 0.5 * f[1] + 0.2 * f[3] + 5.0)
    pids = sorted(stats)
    # an exactly linear relation: out of sample errors vanish
    rep, tab = calibration_report(stats, pids[:10], pids[10:])
    assert rep["loo"]["n_patients"] == 10 and rep["test"]["n_patients"] == 2
    assert rep["loo"]["rel_error_mu_max"] < 1e-9 and rep["test"]["rel_error_sd_max"] < 1e-9
    # one outlier: in-sample it is partly absorbed, held out it is not
    stats["P03"]["T1C"]["mu"] *= 1.3
    rep, tab = calibration_report(stats, pids[:10], pids[10:])
    loo = tab[tab.evaluation == "loo"].set_index("patient")
    assert loo.loc["P03", "rel_error_mu"] > 0.2
    assert rep["loo"]["rel_error_mu_max"] == pytest.approx(loo.rel_error_mu.max())
    assert rep["loo"]["rel_error_mu_mean"] > rep["in_sample"]["rel_error_mu_mean"]


def test_calibration_selects_lowest_loo_model():
    from vce.prep.normalization import _fit_coef, fit_calibration

    rng = np.random.default_rng(2)
    stats = {}
    for i in range(15):  # T1C stats independent of T1/T2 (as with an independent per-scan gain)
        f = rng.uniform(500, 1500, 4)
        stats[f"P{i:02d}"] = _stats(*f, 1000 * rng.uniform(0.95, 1.05), 500 * rng.uniform(0.95, 1.05))
    pids = sorted(stats)
    cal = fit_calibration(stats, pids)
    assert set(cal["selection_loo_rel_error"]) == {"mean", "ratio", "linear"}
    assert cal["kind"] == min(cal["selection_loo_rel_error"], key=cal["selection_loo_rel_error"].get) == "mean"
    X = np.array([[1.0, *(stats[p][m][k] for m in ("T1", "T2") for k in ("mu", "sd"))] for p in pids])
    Y = np.array([[stats[p]["T1C"]["mu"], stats[p]["T1C"]["sd"]] for p in pids])
    np.testing.assert_allclose(np.asarray(cal["coef"])[0], Y.mean(0))
    np.testing.assert_allclose(_fit_coef(X, Y, "linear"), np.linalg.lstsq(X, Y, rcond=None)[0])
    assert fit_calibration(stats, pids[:1])["kind"] == "ratio"  # 1 patient: no leave-one-out possible


def test_calibration_mae_formula():
    from vce.prep.normalization import _calibration_mae, forward, inverse

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 3000, 5000)
    mu, sd, mu_hat, sd_hat = float(x.mean()), float(x.std()), 1.1 * float(x.mean()), 0.9 * float(x.std())
    for method in ("zscore", "sigmoid", "tanh"):  # a perfect normalised prediction, wrong stats
        x_hat = inverse(forward(x, mu, sd, method), mu_hat, sd_hat, method).astype(np.float64)
        assert _calibration_mae(x, mu, sd, mu_hat, sd_hat) == pytest.approx(np.abs(x_hat - x).mean(), rel=1e-3)


def test_calibration_report_files(tiny_normalized, tiny_split):
    import pandas as pd

    rep = json.loads((tiny_normalized / "calibration_report.json").read_text())
    tab = pd.read_csv(tiny_normalized / "calibration_report.csv")
    params = json.loads((tiny_normalized / "params.json").read_text())
    train = sorted(p for p, s in params["split"].items() if s == "train")
    test = sorted(p for p, s in params["split"].items() if s == "test")
    assert sorted(tab.loc[tab.evaluation == "loo", "patient"]) == train
    assert sorted(tab.loc[tab.evaluation == "test", "patient"]) == test
    for part in ("loo", "test"):
        for k in ("rel_error_mu_mean", "rel_error_mu_max", "rel_error_sd_mean", "rel_error_sd_max",
                  "mae_calibration_mean", "mae_calibration_max"):
            assert np.isfinite(rep[part][k]) and rep[part][k] >= 0, (part, k)
    assert rep["loo"]["n_patients"] == len(train)
    assert params["calibration"]["loo_rel_error_mu_mean"] == pytest.approx(rep["loo"]["rel_error_mu_mean"])

    # independent recomputation of one held-out patient: the row's model fitted on the OTHER
    # training patients only
    pid = train[0]
    st = params["patients"]
    others = [p for p in train if p != pid]
    feats = lambda p: [1.0, st[p]["T1"]["mu"], st[p]["T1"]["sd"], st[p]["T2"]["mu"], st[p]["T2"]["sd"]]  # noqa: E731
    X = np.array([feats(p) for p in others])
    Y = np.array([[st[p]["T1C"]["mu"], st[p]["T1C"]["sd"]] for p in others])
    row = tab[(tab.patient == pid) & (tab.evaluation == "loo")].iloc[0]
    assert row.fit_on == len(others)
    if row.model == "linear":
        mu_hat, sd_hat = np.array(feats(pid)) @ np.linalg.lstsq(X, Y, rcond=None)[0]
    elif row.model == "mean":
        mu_hat, sd_hat = Y.mean(axis=0)
    else:
        mu_hat, sd_hat = (Y / X[:, [1, 2]]).mean(axis=0) * np.array(feats(pid))[[1, 2]]
    assert row.mu_pred == pytest.approx(mu_hat, rel=1e-5) and row.sd_pred == pytest.approx(sd_hat, rel=1e-5)
    mu, sd = st[pid]["T1C"]["mu"], st[pid]["T1C"]["sd"]
    assert row.rel_error_mu == pytest.approx(abs(mu_hat - mu) / mu, rel=1e-4)
    # held out means held out: the fit on all training patients predicts this patient differently
    in_mu, _ = apply_calibration(params["calibration"], st[pid])
    assert abs(in_mu - row.mu_pred) > 1e-6 * mu
    assert set(rep["loo_fixed_models"]) >= {"mean", "ratio"}
    # calibration-only MAE from the slice store's T1C body voxels
    idx = pd.read_csv(tiny_split / "train" / "index.csv")
    r = np.flatnonzero(idx.patient.to_numpy() == pid)
    x = np.load(tiny_split / "train" / "T1C.npy")[r][np.load(tiny_split / "train" / "body.npy")[r].astype(bool)]
    want = np.abs((x - mu) * (sd_hat / sd - 1) + (mu_hat - mu)).mean()
    assert row.mae_calibration == pytest.approx(want, rel=1e-4)


def test_object_array_in_the_slice_store_is_refused_by_name(tiny_split, tmp_path, capsys):
    """An object-dtype .npy (pickled Python objects) in the slice store: exit 2 naming the file, no output."""
    import shutil

    from vce.cli import main

    split = tmp_path / "split"
    shutil.copytree(tiny_split, split)
    bad = split / "train" / "T1C.npy"
    np.save(bad, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    out = tmp_path / "normalized"
    rc = main(["normalize", "--split", str(split), "--out", str(out), "--profile", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == (f"vce normalize: error: {bad}: holds an object array (pickled Python objects, dtype object), "
                           "not numbers; it is not loaded (a pickle can run code); rewrite it with the step that makes it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_free_space_needed_is_every_float32_array_of_every_method(tiny_split):
    """The preflight before the memory-mapped writes asks for what normalize_split writes."""
    from vce.prep.normalization import _normalized_nbytes, _open_slice_store
    from vce.prep.split import SPLITS, STORE_MODALITIES

    arrays, _ = _open_slice_store(tiny_split)
    need = _normalized_nbytes(arrays, ("zscore", "sigmoid"))
    data = sum(arrays[s][m].size * 4 for s in SPLITS for m in STORE_MODALITIES)
    assert 2 * data < need <= 2 * data + 2 * len(SPLITS) * len(STORE_MODALITIES) * 4096
