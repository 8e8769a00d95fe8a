"""Learnability reference (vce.learnability): input AUC and the voxelwise regressor on phantoms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from vce.io.errors import VCEInputError
from vce.learnability import (
    FEATURES,
    VoxelRegressor,
    fit_from_store,
    input_auc,
    load_store_inputs,
    sample_voxels,
    voxel_features,
)

Z, S, RING_PX = 20, 32, 3


def phantom(seed: int, informative: bool = True) -> dict[str, np.ndarray]:
    """One patient (Z, S, S), scanner-like units: tumour disc r=5 at a random centre, in a body.

    T1C is 1.8x the background inside the tumour. ``informative``: T1 is lower (850 vs 1000)
    inside the tumour and the body is a disc r=14 surrounded by air. Otherwise T1 and T2 carry
    no trace of the tumour and the body fills the frame (a body edge would itself be a weak cue:
    the tumour is never next to it). T2 is never informative.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    body2d = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= (14**2 if informative else 2 * S**2)
    cy, cx = 16 + rng.integers(-4, 5, size=2)
    disc2d = (yy - cy) ** 2 + (xx - cx) ** 2 <= 5**2
    ring2d = ndimage.binary_dilation(disc2d, iterations=RING_PX) & ~disc2d & body2d
    body, disc, ring = (np.broadcast_to(m, (Z, S, S)).copy() for m in (body2d, disc2d, ring2d))

    def img(level: float, sd: float) -> np.ndarray:
        return np.where(body, level + sd * rng.standard_normal((Z, S, S)), 5 * rng.standard_normal((Z, S, S)))

    t1c, t1, t2 = img(1000, 30), img(1000, 40), img(800, 40)
    t1c[disc] = 1800 + 30 * rng.standard_normal(int(disc.sum()))
    if informative:
        t1[disc] = 850 + 40 * rng.standard_normal(int(disc.sum()))
    return {"T1": t1, "T2": t2, "T1C": t1c, "body": body, "tumour": disc, "ring": ring}


def zscore(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The patient's modalities z-scored with their own body statistics (+ mu/sd of T1C)."""
    out = dict(p)
    for m in ("T1", "T2", "T1C"):
        v = p[m][p["body"]]
        out[m] = ((p[m] - v.mean()) / v.std()).astype(np.float32)
        out[f"{m}_musd"] = np.array([v.mean(), v.std()])
    return out


def stack(patients: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, ...]:
    x = np.concatenate([np.stack([p["T1"], p["T2"]], axis=1) for p in patients])
    y, body, tum = (np.concatenate([p[k] for p in patients]) for k in ("T1C", "body", "tumour"))
    return x, y, body, tum


def disc_ring_ratio(reg: VoxelRegressor, p: dict[str, np.ndarray]) -> tuple[float, float]:
    """Predicted mean T1C in the disc over that in the ring: (z-score difference, scanner-unit ratio)."""
    pred = reg.predict(np.stack([p["T1"], p["T2"]], axis=1))
    mu, sd = p["T1C_musd"]
    scanner = pred * sd + mu
    diff = pred[p["tumour"]].mean() - pred[p["ring"]].mean()
    return float(diff), float(scanner[p["tumour"]].mean() / scanner[p["ring"]].mean())


@pytest.fixture(scope="module")
def informative():
    return [zscore(phantom(s)) for s in range(4)], zscore(phantom(99))


@pytest.fixture(scope="module")
def uninformative():
    return [zscore(phantom(s, informative=False)) for s in range(4)], zscore(phantom(99, informative=False))


def test_input_auc_informative_phantom(informative):
    p = phantom(7)
    a = input_auc(p["T1"], p["T2"], p["tumour"], p["ring"], t1c=p["T1C"])
    assert set(a) == {"auc_t1", "auc_t2", "auc_t1c"}
    assert a["auc_t1"] > 0.9  # 850 vs 1000, sd 40
    assert a["auc_t1c"] > 0.99
    assert 0.5 <= a["auc_t2"] < 0.57
    z = informative[1]  # rank-based: z-scoring does not change the AUC
    pz = phantom(99)
    assert input_auc(z["T1"], z["T2"], z["tumour"], z["ring"])["auc_t1"] == pytest.approx(
        input_auc(pz["T1"], pz["T2"], pz["tumour"], pz["ring"])["auc_t1"]
    )


def test_input_auc_uninformative_and_edge_cases():
    p = phantom(7, informative=False)
    a = input_auc(p["T1"], p["T2"], p["tumour"], p["ring"], t1c=p["T1C"])
    assert 0.5 <= a["auc_t1"] < 0.57 and 0.5 <= a["auc_t2"] < 0.57
    assert a["auc_t1c"] > 0.99
    assert np.isnan(input_auc(p["T1"], p["T2"], p["tumour"], p["ring"])["auc_t1c"])  # no T1C given
    empty = np.zeros_like(p["tumour"])
    assert all(np.isnan(v) for v in input_auc(p["T1"], p["T2"], empty, p["ring"], p["T1C"]).values())
    assert np.isnan(input_auc(p["T1"], p["T2"], p["tumour"], empty)["auc_t1"])
    # direction-free: a tumour darker or brighter by the same amount gives the same AUC
    assert input_auc(-p["T1C"], p["T2"], p["tumour"], p["ring"])["auc_t1"] == pytest.approx(a["auc_t1c"])
    with pytest.raises(ValueError, match="shapes"):
        input_auc(p["T1"][:-1], p["T2"], p["tumour"], p["ring"])
    with pytest.raises(ValueError, match="shapes"):
        input_auc(p["T1"][0], p["T2"][0], p["tumour"][0], p["ring"][0])


def test_features():
    assert len(FEATURES) == 12 and FEATURES[0] == "T1_intensity" and FEATURES[-1] == "T2_sobel"
    rng = np.random.default_rng(0)
    t1, t2 = rng.standard_normal((2, 5, 16, 16)).astype(np.float32)
    f = voxel_features(t1, t2)
    assert f.shape == (5, 16, 16, 12) and f.dtype == np.float32
    np.testing.assert_array_equal(f[..., 0], t1)
    np.testing.assert_allclose(f[2:4], voxel_features(t1[2:4], t2[2:4]), rtol=1e-6)  # in-plane only
    flat = voxel_features(np.full((2, 9, 9), 3.0), np.zeros((2, 9, 9)))
    np.testing.assert_allclose(flat[..., [1, 3]], 3.0, rtol=1e-6)
    np.testing.assert_allclose(flat[..., [2, 4, 5, 8, 10, 11]], 0.0, atol=1e-5)
    with pytest.raises(ValueError):
        voxel_features(t1, t2[:, :8])


def test_sample_voxels_proportional_and_seeded():
    p = phantom(3)
    body, tum = p["body"], p["tumour"]
    idx = sample_voxels(body, tum, 5000, seed=1)
    assert idx.size == 5000 and np.unique(idx).size == 5000 and body.ravel()[idx].all()
    share = tum[body].mean()
    assert abs(tum.ravel()[idx].mean() - share) <= 1.0 / 5000 + 1e-12
    np.testing.assert_array_equal(idx, sample_voxels(body, tum, 5000, seed=1))
    assert not np.array_equal(idx, sample_voxels(body, tum, 5000, seed=2))
    assert sample_voxels(body, None, 10**9, seed=0).size == body.sum()  # capped by the body


def test_regressor_learns_the_disc(informative):
    train, held_out = informative
    reg = VoxelRegressor().fit(*stack(train)[:3], seed=0, max_voxels=20_000, tumour=stack(train)[3])
    assert reg.n_train_voxels == 20_000 and 0 < reg.tumour_fraction < 0.2
    pred = reg.predict(np.stack([held_out["T1"], held_out["T2"]], axis=1))
    assert pred.shape == (Z, S, S) and pred.dtype == np.float32 and np.isfinite(pred).all()
    diff, ratio = disc_ring_ratio(reg, held_out)
    assert diff > 1.0 and ratio > 1.3  # truth: 1.8


def test_regressor_uninformative_inputs(uninformative):
    train, held_out = uninformative
    reg = VoxelRegressor().fit(*stack(train)[:3], seed=0, max_voxels=20_000)
    _, ratio = disc_ring_ratio(reg, held_out)
    assert ratio == pytest.approx(1.0, abs=0.03)  # observed ~1.002; informative phantom ~1.78


def test_regressor_deterministic_and_shape_errors(informative):
    x, y, body, tum = stack(informative[0][:2])
    a = VoxelRegressor(max_iter=30).fit(x, y, body, seed=5, max_voxels=5000).predict(x[:4])
    b = VoxelRegressor(max_iter=30).fit(x, y, body, seed=5, max_voxels=5000).predict(x[:4])
    np.testing.assert_array_equal(a, b)
    reg = VoxelRegressor(max_iter=5)
    with pytest.raises(RuntimeError):
        reg.predict(x)
    with pytest.raises(ValueError):
        reg.fit(x[:, 0], y, body)  # (N, S, S) instead of (N, 2, S, S)
    with pytest.raises(ValueError):
        reg.fit(x, y[:-1], body)
    with pytest.raises(ValueError):
        reg.fit(x, y, body[:, :-1])
    with pytest.raises(ValueError, match="empty"):
        reg.fit(x, y, np.zeros_like(body))
    with pytest.raises(ValueError):
        reg.fit(x, y, body).predict(x[:, :1])


def _write_store(root, patients: dict[str, list[dict[str, np.ndarray]]]) -> tuple:
    """A minimal slice store (masks) + zscore store (modalities) with index.csv for each split."""
    norm, split = root / "normalized", root / "split"
    for s, pats in patients.items():
        (norm / "zscore" / s).mkdir(parents=True)
        (split / s).mkdir(parents=True)
        index = pd.DataFrame({"patient": [f"{s}{i:02d}" for i, _ in enumerate(pats) for _ in range(Z)],
                              "z": [z for _ in pats for z in range(Z)]})
        for d in (norm / "zscore" / s, split / s):
            index.to_csv(d / "index.csv", index=False)
        for m in ("T1", "T2", "T1C"):
            np.save(norm / "zscore" / s / f"{m}.npy", np.concatenate([p[m] for p in pats]).astype(np.float32))
        for m, k in (("body", "body"), ("tumor", "tumour")):
            np.save(split / s / f"{m}.npy", np.concatenate([p[k] for p in pats]).astype(np.uint8))
    return norm, split


def test_fit_from_store_uses_train_only(tmp_path, informative):
    train, held_out = informative
    bad = dict(held_out, T1C=np.full_like(held_out["T1C"], np.nan))  # a test patient would poison the fit
    norm, split = _write_store(tmp_path, {"train": train[:3], "test": [bad]})
    reg = fit_from_store(norm, split, seed=0, max_voxels=10_000, max_iter=50)
    assert reg.train_patients == ("train00", "train01", "train02") and reg.n_train_voxels == 10_000
    x, index = load_store_inputs(norm, split, "test")
    assert x.shape == (Z, 2, S, S) and list(index.patient.unique()) == ["test00"]
    pred = reg.predict(x)
    assert pred[held_out["tumour"]].mean() > pred[held_out["ring"]].mean() + 1.0
    pd.DataFrame({"patient": ["x"] * (3 * Z), "z": range(3 * Z)}).to_csv(split / "train" / "index.csv", index=False)
    with pytest.raises(VCEInputError, match="different slices"):
        fit_from_store(norm, split)
    (split / "train" / "tumor.npy").unlink()
    with pytest.raises(VCEInputError, match="tumor.npy"):
        fit_from_store(norm, split)
