"""Intensity normalisation per patient volume (paper eq. 11-13) and its exact inverse.

``zscore``:  (x - mu) / sd
``sigmoid``: 1 / (1 + exp(-(x - mu) / sd))
``tanh``:    (tanh(0.01 (x - mu) / sd) + 1) / 2      (eq. 13 as printed)
``tanh_f1``: (tanh((x - mu) / sd) + 1) / 2           (not the paper's: eq. 13 with factor 1, a sensitivity variant)

mu and sd are the mean and standard deviation of one patient's volume for one modality, taken
over the body (head) voxels of the patient's stored slices: the air around the head would
otherwise dominate the statistics and squeeze all tissue into a narrow band of the sigmoid.

The paper inverts predictions with the ground-truth T1C's own mu and sd (used by ``evaluate``,
as in the paper). A new patient has no T1C, so :func:`fit_calibration` learns T1C's mu and sd
from the T1 and T2 statistics on the training patients, used by ``predict``; the model (training
mean, T1 ratio or least squares on all statistics) is chosen by leave-one-patient-out error.

Outputs of :func:`normalize_split` (``<out>/<method>/{train,test}/{T1,T2,T1C}.npy`` float32 and
``<out>/params.json``) for every method, so each training variant picks its own, plus
``<out>/calibration_report.{json,csv}``: the calibration's out-of-sample error
(leave-one-patient-out over the training patients, and on the test patients). See
docs/normalization.md.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import NORMALIZATIONS
from ..io.atomic import atomic_dir, ensure_free_space, write_json
from ..io.errors import VCEInputError, npy_error
from .split import SPLITS, STORE_MODALITIES

logger = logging.getLogger(__name__)

TANH_SCALE = 0.01
#: The factor inside tanh of each tanh-type normalisation.
TANH_FACTORS = {"tanh": TANH_SCALE, "tanh_f1": 1.0}
_CLIP = 1e-6  # keeps logit/arctanh finite when a prediction reaches the bounds of (0, 1)


def forward(x: np.ndarray, mu: float, sd: float, method: str) -> np.ndarray:
    """Normalise scanner-unit intensities ``x`` with a patient's ``mu``, ``sd`` (eq. 11-13)."""
    z = (np.asarray(x, dtype=np.float64) - mu) / sd
    if method == "zscore":
        y = z
    elif method == "sigmoid":
        y = 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), overflow-free
    elif method in TANH_FACTORS:
        y = 0.5 * (np.tanh(TANH_FACTORS[method] * z) + 1.0)
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
    elif method in TANH_FACTORS:
        y = np.clip(y, _CLIP, 1 - _CLIP)
        z = np.arctanh(2.0 * y - 1.0) / TANH_FACTORS[method]
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


CALIBRATION_MODELS = ("mean", "ratio", "linear")
_N_FEATURES = 5  # length of :func:`_features`


def _min_loo_patients(kind: str) -> int:
    """Fewest patients for which ``kind`` has a leave-one-out fit (``linear``: more than the features)."""
    return _N_FEATURES + 2 if kind == "linear" else 2


def _fit_coef(X: np.ndarray, Y: np.ndarray, kind: str) -> np.ndarray:
    """Coefficients (5, 2) mapping features X (n, 5) to targets Y (n, 2) for one model kind.

    ``mean``: the training mean (intercept only); ``ratio``: T1C mean/sd proportional to T1's
    (mean of the ratios); ``linear``: least squares on all 5 features.
    """
    coef = np.zeros((X.shape[1], 2))
    if kind == "mean":
        coef[0] = Y.mean(axis=0)
    elif kind == "ratio":
        coef[1, 0], coef[2, 1] = (Y / X[:, [1, 2]]).mean(axis=0)
    elif kind == "linear":
        coef = np.linalg.lstsq(X, Y, rcond=None)[0]
    else:
        raise ValueError(f"unknown calibration model {kind!r}; expected one of {CALIBRATION_MODELS}")
    return coef


def _loo_error(X: np.ndarray, Y: np.ndarray, kind: str) -> float:
    """Mean over patients and over (mu, sd) of the leave-one-out relative error of ``kind``."""
    errs = []
    for i in range(len(X)):
        keep = np.arange(len(X)) != i
        pred = X[i] @ _fit_coef(X[keep], Y[keep], kind)
        errs.append(np.abs(pred - Y[i]) / Y[i])
    return float(np.mean(errs))


def fit_calibration(stats: dict[str, dict[str, dict[str, float]]], pids: list[str], kind: str = "auto") -> dict[str, Any]:
    """Map (1, mu_T1, sd_T1, mu_T2, sd_T2) -> (mu_T1C, sd_T1C), fitted on the patients ``pids``.

    ``kind="auto"`` picks, among the models of :data:`CALIBRATION_MODELS` that the number of
    patients allows (``linear`` needs >= 7, ``ratio``/``mean`` >= 2 so that a leave-one-out
    exists; with 1 patient: ``ratio``), the one with the lowest leave-one-patient-out error
    *within* ``pids`` -- only ``pids`` are used, so an outer leave-one-out around this function
    (:func:`calibration_report`) stays out of sample. Reports the in-sample relative errors.
    """
    X = np.stack([_features(stats[p]) for p in pids])
    Y = np.array([[stats[p]["T1C"]["mu"], stats[p]["T1C"]["sd"]] for p in pids])
    n = len(pids)
    selection: dict[str, float] = {}
    if kind == "auto":
        cands = [k for k in CALIBRATION_MODELS if n >= _min_loo_patients(k)]
        if cands:
            selection = {k: _loo_error(X, Y, k) for k in cands}
            kind = min(cands, key=lambda k: selection[k])
        else:
            kind = "ratio"
    if kind == "linear" and n <= X.shape[1]:
        raise ValueError(f"the linear calibration needs more than {X.shape[1]} patients, got {n}")
    coef = _fit_coef(X, Y, kind)
    pred = X @ coef
    rel = np.abs(pred - Y) / Y
    return {
        "kind": kind,
        "features": ["1", "T1.mu", "T1.sd", "T2.mu", "T2.sd"],
        "coef": coef.tolist(),
        "selection_loo_rel_error": selection,
        "train_rel_error_mu": float(rel[:, 0].mean()),
        "train_rel_error_sd": float(rel[:, 1].mean()),
    }


def apply_calibration(calibration: dict[str, Any], stats: dict[str, dict[str, float]]) -> tuple[float, float]:
    """Predicted (mu, sd) of the T1C of a patient with T1/T2 ``stats``."""
    mu, sd = _features(stats) @ np.asarray(calibration["coef"])
    return float(mu), float(max(sd, 1e-6))


def _calibration_mae(x: np.ndarray, mu: float, sd: float, mu_hat: float, sd_hat: float) -> float:
    """Mean |error| (scanner units) that the calibration alone adds to a perfect prediction.

    A prediction equal to the true normalised T1C, ``y = f((x - mu) / sd)``, inverted with the
    calibrated ``(mu_hat, sd_hat)`` instead of the true ``(mu, sd)`` gives
    ``x_hat = (x - mu) sd_hat / sd + mu_hat`` (for every method: the inverse undoes ``f``
    exactly), so the error is ``|(x - mu)(sd_hat / sd - 1) + (mu_hat - mu)|``, averaged here over
    the body voxels ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs((x - mu) * (sd_hat / sd - 1.0) + (mu_hat - mu)).mean())


def _report_row(
    stats: dict[str, dict[str, dict[str, float]]],
    pid: str,
    role: str,
    cal: dict[str, Any],
    fit_on: int,
    t1c_body: Mapping[str, np.ndarray] | None,
) -> dict[str, Any]:
    """One row of the calibration report: patient ``pid`` scored with calibration ``cal`` as ``role``."""
    mu, sd = stats[pid]["T1C"]["mu"], stats[pid]["T1C"]["sd"]
    mu_hat, sd_hat = apply_calibration(cal, stats[pid])
    r = {
        "patient": pid,
        "evaluation": role,
        "fit_on": fit_on,
        "model": cal["kind"],
        "mu_true": mu,
        "mu_pred": mu_hat,
        "rel_error_mu": abs(mu_hat - mu) / mu,
        "sd_true": sd,
        "sd_pred": sd_hat,
        "rel_error_sd": abs(sd_hat - sd) / sd,
        "mae_calibration": np.nan,
    }
    if t1c_body is not None and pid in t1c_body:
        r["mae_calibration"] = _calibration_mae(t1c_body[pid], mu, sd, mu_hat, sd_hat)
    return r


def _report_rows(
    stats: dict[str, dict[str, dict[str, float]]],
    train_pids: list[str],
    test_pids: list[str],
    t1c_body: Mapping[str, np.ndarray] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-patient rows (``loo`` over the training patients, then ``test``) and the full-training fit."""
    rows = []
    n = len(train_pids)
    if n >= 2:
        for pid in train_pids:
            cal = fit_calibration(stats, [p for p in train_pids if p != pid])
            rows.append(_report_row(stats, pid, "loo", cal, n - 1, t1c_body))
    full = fit_calibration(stats, train_pids)
    for pid in test_pids:
        rows.append(_report_row(stats, pid, "test", full, n, t1c_body))
    return rows, full


def _role_summary(table: pd.DataFrame, role: str) -> dict[str, Any]:
    """Patient count and mean/max of each error column of the report rows of ``role``."""
    t = table[table.evaluation == role] if len(table) else table
    if len(t) == 0:
        return {"n_patients": 0}
    out: dict[str, Any] = {"n_patients": int(len(t))}
    for k in ("rel_error_mu", "rel_error_sd", "mae_calibration"):
        v = t[k].to_numpy(dtype=np.float64)
        if np.all(np.isnan(v)):
            continue
        out[f"{k}_mean"] = float(np.nanmean(v))
        out[f"{k}_max"] = float(np.nanmax(v))
    return out


def _fixed_model_loo(stats: dict[str, dict[str, dict[str, float]]], train_pids: list[str]) -> dict[str, dict[str, float]]:
    """For comparison: each model with its kind fixed (no selection), leave-one-patient-out."""
    fixed: dict[str, dict[str, float]] = {}
    n = len(train_pids)
    for kind in CALIBRATION_MODELS:
        if n < _min_loo_patients(kind):
            continue
        errs = []
        for pid in train_pids:
            cal = fit_calibration(stats, [p for p in train_pids if p != pid], kind=kind)
            mu_hat, sd_hat = apply_calibration(cal, stats[pid])
            t = stats[pid]["T1C"]
            errs.append((abs(mu_hat - t["mu"]) / t["mu"], abs(sd_hat - t["sd"]) / t["sd"]))
        e = np.asarray(errs)
        fixed[kind] = {"rel_error_mu_mean": float(e[:, 0].mean()), "rel_error_sd_mean": float(e[:, 1].mean())}
    return fixed


def _report_summary(
    full: dict[str, Any], fixed: dict[str, dict[str, float]], n_train: int, table: pd.DataFrame
) -> dict[str, Any]:
    """The summary of :func:`calibration_report` (written as ``calibration_report.json``)."""
    return {
        "what": "error of the T1C calibration (T1C mean/sd predicted from T1/T2 statistics, used by predict)",
        "model": full["kind"],
        "model_selection": "lowest leave-one-patient-out error among mean | ratio | linear, chosen inside each fit "
        "(nested: the 'loo' numbers include the selection)",
        "loo_fixed_models": fixed,
        "features": full["features"],
        "train_patients": n_train,
        "loo": {"method": "leave-one-patient-out over the training patients", **_role_summary(table, "loo")},
        "test": {"method": "fit on all training patients, applied to the test patients", **_role_summary(table, "test")},
        "in_sample": {"rel_error_mu_mean": full["train_rel_error_mu"], "rel_error_sd_mean": full["train_rel_error_sd"]},
        "mae_calibration_definition": (
            "mean over body voxels of |(x - mu)(sd_hat/sd - 1) + (mu_hat - mu)|: scanner-unit MAE that the "
            "calibration alone adds to a perfect normalised prediction"
        ),
    }


def calibration_report(
    stats: dict[str, dict[str, dict[str, float]]],
    train_pids: list[str],
    test_pids: list[str],
    t1c_body: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Out-of-sample error of the T1C calibration.

    * ``loo``: leave-one-patient-out over the training patients -- for each training patient the
      calibration is refitted on the *other* training patients (:func:`fit_calibration`) and
      applied to the held-out one;
    * ``test``: the calibration fitted on all training patients, applied to the test patients.

    Per patient: relative error ``|pred - true| / true`` of the T1C mean and sd and, when the
    patient's T1C body voxels ``t1c_body[pid]`` (scanner units) are given, the MAE in scanner
    units that the calibration alone adds to a perfect prediction (:func:`_calibration_mae`).
    Returns ``(summary, per-patient table)``.
    """
    rows, full = _report_rows(stats, train_pids, test_pids, t1c_body)
    table = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["patient", "evaluation"])
    fixed = _fixed_model_loo(stats, train_pids)
    return _report_summary(full, fixed, len(train_pids), table), table


class _LazyMap(Mapping):
    """Read-only mapping whose values are computed from ``keys[k]`` by ``load`` on each access."""

    def __init__(self, keys: dict[str, Any], load: Callable[[Any], np.ndarray]):
        self._keys, self._load = keys, load

    def __getitem__(self, k: str) -> np.ndarray:
        return self._load(self._keys[k])

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


#: the slice store of one split: {modality or "body": memory-mapped (N, S, S) array}
_Store = dict[str, np.ndarray]
#: each patient's rows in the slice store of one split: {pid: row indices}
_Rows = dict[str, np.ndarray]


def _check_slice_store(split_dir: Path) -> None:
    """Raise :class:`VCEInputError` naming the first file of the slice store that is missing."""
    for s in SPLITS:
        for f in [*(f"{m}.npy" for m in STORE_MODALITIES), "body.npy", "index.csv"]:
            if not (split_dir / s / f).is_file():
                raise VCEInputError(f"{split_dir / s / f}: missing from the slice store (run `vce split` first)")


def _open_store_array(path: Path) -> np.ndarray:
    """One memory-mapped array of the slice store; :class:`VCEInputError` naming the file when it
    cannot be read (an object array is refused, never unpickled)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise npy_error(path, exc) from None


def _open_slice_store(split_dir: Path) -> tuple[dict[str, _Store], dict[str, _Rows]]:
    """The memory-mapped arrays of every split, and each split's ``{pid: row indices}`` (index.csv order)."""
    arrays = {s: {m: _open_store_array(split_dir / s / f"{m}.npy") for m in (*STORE_MODALITIES, "body")} for s in SPLITS}
    index = {s: pd.read_csv(split_dir / s / "index.csv") for s in SPLITS}
    rows = {s: {p: np.flatnonzero(index[s].patient.to_numpy() == p) for p in index[s].patient.unique()} for s in SPLITS}
    return arrays, rows


def _store_statistics(arrays: dict[str, _Store], rows: dict[str, _Rows]) -> dict[str, dict[str, dict[str, float]]]:
    """``{pid: {modality: {"mu", "sd"}}}`` over each patient's body voxels (:func:`patient_stats`)."""
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for s in SPLITS:
        for pid, r in rows[s].items():
            body = arrays[s]["body"][r]
            stats[pid] = {}
            for m in STORE_MODALITIES:
                mu, sd = patient_stats(arrays[s][m][r], body)
                stats[pid][m] = {"mu": mu, "sd": sd}
    return stats


def _t1c_body_voxels(arrays: dict[str, _Store], where: tuple[str, np.ndarray]) -> np.ndarray:
    """T1C body voxels (float64, scanner units) of the store rows ``where = (split, rows)``."""
    s, r = where
    return np.asarray(arrays[s]["T1C"][r], dtype=np.float64)[np.asarray(arrays[s]["body"][r], dtype=bool)]


def _lazy_t1c_body(arrays: dict[str, _Store], rows: dict[str, _Rows]) -> _LazyMap:
    """``{pid: T1C body voxels}``, one patient at a time (read from the memmapped store on access),
    so peak memory does not grow with the cohort."""
    where = {pid: (s, r) for s in SPLITS for pid, r in rows[s].items()}
    return _LazyMap(where, functools.partial(_t1c_body_voxels, arrays))


def _normalization_params(
    methods: tuple[str, ...],
    stats: dict[str, dict[str, dict[str, float]]],
    rows: dict[str, _Rows],
    train_pids: list[str],
    loo: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``params.json``: methods, statistics, split, calibration (with its loo error)."""
    params = {
        "methods": list(methods),
        "tanh_scale": TANH_SCALE,
        "statistics": "mean/sd over body voxels of the patient's stored slices, scanner units",
        "patients": stats,
        "split": {p: s for s in SPLITS for p in rows[s]},
        "calibration": fit_calibration(stats, train_pids),
    }
    params["calibration"]["loo_rel_error_mu_mean"] = loo.get("rel_error_mu_mean")
    params["calibration"]["loo_rel_error_sd_mean"] = loo.get("rel_error_sd_mean")
    return params


def _write_normalized_split(
    d: Path, store: _Store, rows: _Rows, stats: dict[str, dict[str, dict[str, float]]], method: str
) -> None:
    """Write ``{T1,T2,T1C}.npy`` of one split normalised with ``method`` into the new directory ``d``."""
    d.mkdir(parents=True)
    for m in STORE_MODALITIES:
        out = np.lib.format.open_memmap(d / f"{m}.npy", mode="w+", dtype=np.float32, shape=store[m].shape)
        for pid, r in rows.items():
            st = stats[pid][m]
            out[r] = forward(store[m][r], st["mu"], st["sd"], method)
        out.flush()
        del out


def _normalized_nbytes(arrays: dict[str, _Store], methods: tuple[str, ...]) -> int:
    """Bytes :func:`normalize_split` writes: a float32 copy of every modality of every split per method
    (plus a page of header per file)."""
    per_method = sum(int(np.prod(arrays[s][m].shape)) * 4 + 4096 for s in SPLITS for m in STORE_MODALITIES)
    return per_method * len(methods)


def _log_calibration(loo: dict[str, Any]) -> None:
    """Log the leave-one-patient-out error of the T1C calibration (nothing without loo patients)."""
    if loo.get("n_patients"):
        logger.info(
            "T1C calibration, leave-one-patient-out over %d training patients: relative error of the mean "
            "%.1f%% (max %.1f%%), of the sd %.1f%% (max %.1f%%); calibration-only MAE %.1f (max %.1f) scanner units",
            loo["n_patients"], 100 * loo["rel_error_mu_mean"], 100 * loo["rel_error_mu_max"],
            100 * loo["rel_error_sd_mean"], 100 * loo["rel_error_sd_max"],
            loo.get("mae_calibration_mean", float("nan")), loo.get("mae_calibration_max", float("nan")),
        )


def normalize_split(split_dir: str | Path, out_dir: str | Path, methods: tuple[str, ...] = NORMALIZATIONS) -> dict[str, Any]:
    """Normalise the slice store of ``split_dir`` with every method in ``methods`` (atomic).

    Returns the parameters written to ``<out_dir>/params.json``.
    """
    split_dir = Path(split_dir)
    _check_slice_store(split_dir)
    arrays, rows = _open_slice_store(split_dir)
    stats = _store_statistics(arrays, rows)
    train_pids = sorted(rows["train"])
    report, report_table = calibration_report(stats, train_pids, sorted(rows["test"]), _lazy_t1c_body(arrays, rows))
    params = _normalization_params(methods, stats, rows, train_pids, report["loo"])
    # the arrays are written memory-mapped, which dies of SIGBUS on a full disk: check first
    ensure_free_space(Path(out_dir).parent, _normalized_nbytes(arrays, methods), "the normalised slice store", final=out_dir)
    with atomic_dir(out_dir) as tmp:
        for method in methods:
            for s in SPLITS:
                _write_normalized_split(tmp / method / s, arrays[s], rows[s], stats, method)
                shutil.copy2(split_dir / s / "index.csv", tmp / method / s / "index.csv")
        write_json(tmp / "params.json", params)
        write_json(tmp / "calibration_report.json", report)
        report_table.to_csv(tmp / "calibration_report.csv", index=False, float_format="%.6g")
    _log_calibration(report["loo"])
    logger.info("normalised %s with %s -> %s", split_dir, methods, out_dir)
    return params
