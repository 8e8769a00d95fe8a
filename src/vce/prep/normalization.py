"""Intensity normalisation per patient volume (paper eq. 11-13) and its exact inverse.

``zscore``:  (x - mu) / sd
``sigmoid``: 1 / (1 + exp(-(x - mu) / sd))
``tanh``:    (tanh(0.01 (x - mu) / sd) + 1) / 2

mu and sd are the mean and standard deviation of one patient's volume for one modality, taken
over the body (head) voxels of the patient's stored slices: the air around the head would
otherwise dominate the statistics and squeeze all tissue into a narrow band of the sigmoid.

The paper inverts predictions with the ground-truth T1C's own mu and sd (used by ``evaluate``,
as in the paper). A new patient has no T1C, so :func:`fit_calibration` learns T1C's mu and sd
from the T1 and T2 statistics on the training patients (least squares), used by ``predict``.

Outputs of :func:`normalize_split` (``<out>/<method>/{train,test}/{T1,T2,T1C}.npy`` float32 and
``<out>/params.json``) for every method, so each training variant picks its own.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import NORMALIZATIONS
from ..io.atomic import atomic_dir, write_json
from ..io.errors import VCEInputError
from .split import SPLITS, STORE_MODALITIES

logger = logging.getLogger(__name__)

TANH_SCALE = 0.01
_CLIP = 1e-6  # keeps logit/arctanh finite when a prediction reaches the bounds of (0, 1)


def forward(x: np.ndarray, mu: float, sd: float, method: str) -> np.ndarray:
    """Normalise scanner-unit intensities ``x`` with a patient's ``mu``, ``sd`` (eq. 11-13)."""
    z = (np.asarray(x, dtype=np.float64) - mu) / sd
    if method == "zscore":
        y = z
    elif method == "sigmoid":
        y = 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), overflow-free
    elif method == "tanh":
        y = 0.5 * (np.tanh(TANH_SCALE * z) + 1.0)
    else:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {NORMALIZATIONS}")
    return y.astype(np.float32)


def inverse(y: np.ndarray, mu: float, sd: float, method: str) -> np.ndarray:
    """Scanner-unit intensities from normalised ``y`` (inverse of :func:`forward`).

    Sigmoid and tanh outputs are clipped to [1e-6, 1 - 1e-6] before the logit / arctanh.
    """
    y = np.asarray(y, dtype=np.float64)
    if method == "zscore":
        z = y
    elif method == "sigmoid":
        y = np.clip(y, _CLIP, 1 - _CLIP)
        z = np.log(y) - np.log1p(-y)
    elif method == "tanh":
        y = np.clip(y, _CLIP, 1 - _CLIP)
        z = np.arctanh(2.0 * y - 1.0) / TANH_SCALE
    else:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {NORMALIZATIONS}")
    return (z * sd + mu).astype(np.float32)


def patient_stats(slices: np.ndarray, body: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (scanner units) of ``slices`` over the ``body`` voxels."""
    v = np.asarray(slices, dtype=np.float64)[np.asarray(body, dtype=bool)]
    if v.size < 2:
        raise VCEInputError("patient has fewer than 2 body voxels; cannot normalise")
    sd = float(v.std())
    if sd <= 0:
        raise VCEInputError("patient volume is constant inside the body; cannot normalise")
    return float(v.mean()), sd


def _features(stats: dict[str, dict[str, float]]) -> np.ndarray:
    return np.array([1.0, stats["T1"]["mu"], stats["T1"]["sd"], stats["T2"]["mu"], stats["T2"]["sd"]])


def fit_calibration(stats: dict[str, dict[str, dict[str, float]]], pids: list[str]) -> dict[str, Any]:
    """Least-squares map from (1, mu_T1, sd_T1, mu_T2, sd_T2) to (mu_T1C, sd_T1C) on ``pids``.

    Falls back to the training mean of the T1C/T1 ratios when there are too few patients.
    Reports the in-sample relative error of mu and sd.
    """
    X = np.stack([_features(stats[p]) for p in pids])
    Y = np.array([[stats[p]["T1C"]["mu"], stats[p]["T1C"]["sd"]] for p in pids])
    if len(pids) > X.shape[1]:
        coef, *_ = np.linalg.lstsq(X, Y, rcond=None)
        kind = "linear"
    else:  # ratio model: T1C stats proportional to T1 stats
        r = (Y / X[:, [1, 2]]).mean(axis=0)
        coef = np.zeros((X.shape[1], 2))
        coef[1, 0], coef[2, 1] = r
        kind = "ratio"
    pred = X @ coef
    rel = np.abs(pred - Y) / Y
    return {
        "kind": kind,
        "features": ["1", "T1.mu", "T1.sd", "T2.mu", "T2.sd"],
        "coef": coef.tolist(),
        "train_rel_error_mu": float(rel[:, 0].mean()),
        "train_rel_error_sd": float(rel[:, 1].mean()),
    }


def apply_calibration(calibration: dict[str, Any], stats: dict[str, dict[str, float]]) -> tuple[float, float]:
    """Predicted (mu, sd) of the T1C of a patient with T1/T2 ``stats``."""
    mu, sd = _features(stats) @ np.asarray(calibration["coef"])
    return float(mu), float(max(sd, 1e-6))


def normalize_split(split_dir: str | Path, out_dir: str | Path, methods: tuple[str, ...] = NORMALIZATIONS) -> dict[str, Any]:
    """Normalise the slice store of ``split_dir`` with every method in ``methods`` (atomic).

    Returns the parameters written to ``<out_dir>/params.json``.
    """
    split_dir = Path(split_dir)
    for s in SPLITS:
        for f in [*(f"{m}.npy" for m in STORE_MODALITIES), "body.npy", "index.csv"]:
            if not (split_dir / s / f).is_file():
                raise VCEInputError(f"{split_dir / s / f}: missing from the slice store (run `vce split` first)")
    stats: dict[str, dict[str, dict[str, float]]] = {}
    arrays = {s: {m: np.load(split_dir / s / f"{m}.npy", mmap_mode="r") for m in (*STORE_MODALITIES, "body")} for s in SPLITS}
    index = {s: pd.read_csv(split_dir / s / "index.csv") for s in SPLITS}
    rows = {s: {p: np.flatnonzero(index[s].patient.to_numpy() == p) for p in index[s].patient.unique()} for s in SPLITS}
    for s in SPLITS:
        for pid, r in rows[s].items():
            body = arrays[s]["body"][r]
            stats[pid] = {}
            for m in STORE_MODALITIES:
                mu, sd = patient_stats(arrays[s][m][r], body)
                stats[pid][m] = {"mu": mu, "sd": sd}
    train_pids = sorted(rows["train"])
    params = {
        "methods": list(methods),
        "tanh_scale": TANH_SCALE,
        "statistics": "mean/sd over body voxels of the patient's stored slices, scanner units",
        "patients": stats,
        "split": {p: s for s in SPLITS for p in rows[s]},
        "calibration": fit_calibration(stats, train_pids),
    }
    with atomic_dir(out_dir) as tmp:
        for method in methods:
            for s in SPLITS:
                d = tmp / method / s
                d.mkdir(parents=True)
                for m in STORE_MODALITIES:
                    out = np.lib.format.open_memmap(d / f"{m}.npy", mode="w+", dtype=np.float32, shape=arrays[s][m].shape)
                    for pid, r in rows[s].items():
                        st = stats[pid][m]
                        out[r] = forward(arrays[s][m][r], st["mu"], st["sd"], method)
                    out.flush()
                    del out
                shutil.copy2(split_dir / s / "index.csv", d / "index.csv")
        write_json(tmp / "params.json", params)
    logger.info("normalised %s with %s; T1C calibration error mu %.1f%% sd %.1f%%", split_dir, methods,
                100 * params["calibration"]["train_rel_error_mu"], 100 * params["calibration"]["train_rel_error_sd"])
    return params
