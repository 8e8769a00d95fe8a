"""Evaluate one trained variant on the test patients.

For each test patient: synthesise the T1C volume on the T2 grid (``pred/<pid>.nii.gz``, 12-bit),
then score every stored slice against the real T1C with MAE, MSE, SSIM (L = 4095) and the four
texture metrics (eq. 4-10). As in the paper, predictions are mapped back to scanner units with
the ground-truth T1C's own statistics.

Outputs in ``<out>`` (atomic): ``pred/``, ``metrics_slices.csv``, ``metrics_patients.csv``,
``summary.json``, ``variant.json``, ``montage.png``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .config import EvaluateConfig
from .inference import synthesize_t1c
from .io.atomic import atomic_dir, write_json
from .io.errors import VCEInputError
from .io.nifti import PATIENT_FILES, read_volume, to_uint12, write_volume
from .metrics import slice_metrics
from .models.checkpoint import load_generator
from .reporting.montage import save_montage
from .tracking import Tracker

logger = logging.getLogger(__name__)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise VCEInputError(f"{path}: missing {what}")
    return path


@dataclass
class _Inputs:
    """What :func:`evaluate_variant` reads besides the registered volumes."""

    generator: Any
    variant: dict[str, Any]
    params: dict[str, Any]
    geometry: dict[str, Any]
    test: list[str]
    split_info: dict[str, Any]


def _load_inputs(model_dir: Path, split_dir: Path, norm_dir: Path) -> _Inputs:
    """The generator and its variant, the normalisation parameters, split geometry and test patients."""
    generator, meta = load_generator(_need(model_dir / "checkpoint.pt", "checkpoint (run `vce train` first)"))
    variant = meta["variant"]
    params = json.loads(_need(norm_dir / "params.json", "normalisation parameters").read_text())
    geometry = json.loads(_need(split_dir / "geometry.json", "split geometry").read_text())
    manifest = pd.read_csv(_need(split_dir / "manifest.csv", "split manifest"))
    split_info = json.loads(_need(split_dir / "split.json", "split summary").read_text())
    test = manifest.loc[manifest.split == "test", "patient"].tolist()
    return _Inputs(generator, variant, params, geometry, test, split_info)


def _predict_patient(inputs: _Inputs, pdir: Path, pid: str, pred_path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Synthesise one patient's T1C (12-bit, written to ``pred_path`` on the T2 grid); returns (volumes, prediction)."""
    imgs = {m: read_volume(pdir / PATIENT_FILES[m], what=f"registered {m} of patient {pid}") for m in ("T1", "T2", "T1C")}
    t2_img = imgs["T2"]
    vols = {m: sitk.GetArrayFromImage(img).astype(np.float32) for m, img in imgs.items()}
    st = inputs.params["patients"][pid]
    t1c = (st["T1C"]["mu"], st["T1C"]["sd"])
    pred = synthesize_t1c(inputs.generator, inputs.variant, vols, st, t1c, int(inputs.split_info["image_size"]))
    pred12 = to_uint12(pred)
    img = sitk.GetImageFromArray(pred12)
    img.CopyInformation(t2_img)
    write_volume(img, pred_path)
    return vols, pred12


def _slice_rows(pid: str, pred12: np.ndarray, gt: np.ndarray, zs: list[int], data_range: float) -> list[dict[str, Any]]:
    """The metrics of each stored slice ``zs`` of one patient (rows of ``metrics_slices.csv``)."""
    rows = []
    for z in zs:
        m = slice_metrics(pred12[z].astype(np.float64), gt[z].astype(np.float64), data_range=data_range)
        rows.append({"patient": pid, "slice": int(z), **m})
    return rows


def _montage_slice(pdir: Path, zs: list[int]) -> int:
    """The slice shown in the montage: the most tumour (if there is a mask), else the middle stored slice."""
    mask_path = pdir / PATIENT_FILES["mask"]
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) if mask_path.is_file() else None
    return zs[int(np.argmax([tumour[z].sum() for z in zs]))] if tumour is not None else zs[len(zs) // 2]


def _montage_row(
    pid: str, zbest: int, vols: dict[str, np.ndarray], pred12: np.ndarray, variant: dict[str, Any]
) -> tuple[str, dict[str, np.ndarray]]:
    """One montage row: T1, T2, real T1C, the prediction and its absolute error at slice ``zbest``."""
    gt = vols["T1C"]
    return (f"{pid} z={zbest}", {
        "T1": vols["T1"][zbest], "T2": vols["T2"][zbest], "T1C (real)": gt[zbest],
        f"VCE ({variant['name']})": pred12[zbest], "|error|": np.abs(pred12[zbest] - gt[zbest]),
    })


def _write_metrics(
    tmp: Path, rows: list[dict[str, Any]], variant: dict[str, Any], n_test: int
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Write the slice and patient metrics, ``summary.json`` and ``variant.json``; returns (patients, summary)."""
    slices = pd.DataFrame(rows)
    slices.to_csv(tmp / "metrics_slices.csv", index=False, float_format="%.6g")
    patients = slices.drop(columns="slice").groupby("patient", sort=True).mean().reset_index()
    patients.to_csv(tmp / "metrics_patients.csv", index=False, float_format="%.6g")
    summary = {k: float(patients[k].mean()) for k in patients.columns if k != "patient"}
    write_json(tmp / "summary.json", {"variant": variant, "n_patients": n_test, "n_slices": len(slices), "mean_over_patients": summary})
    write_json(tmp / "variant.json", variant)
    return patients, summary


def _track(tracker: Tracker, summary: dict[str, float], out_dir: Path) -> None:
    """Log the test metrics and the evaluation files to the tracker."""
    tracker.log_metrics({f"test_{k}": v for k, v in summary.items()})
    for f in ("montage.png", "metrics_patients.csv", "metrics_slices.csv"):
        tracker.log_artifact(out_dir / f, "evaluation")


def evaluate_variant(
    model_dir: str | Path,
    registered_dir: str | Path,
    split_dir: str | Path,
    norm_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    tracker: Tracker | None = None,
) -> pd.DataFrame:
    """Predict and score the test patients with the generator in ``model_dir``. Returns per-patient metrics."""
    model_dir, registered_dir, split_dir, norm_dir = map(Path, (model_dir, registered_dir, split_dir, norm_dir))
    inputs = _load_inputs(model_dir, split_dir, norm_dir)
    variant = inputs.variant
    rows: list[dict[str, Any]] = []
    montage_rows = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "pred").mkdir()
        for pid in inputs.test:
            pdir = registered_dir / pid
            vols, pred12 = _predict_patient(inputs, pdir, pid, tmp / "pred" / f"{pid}.nii.gz")
            zs = inputs.geometry[pid]["z"]
            rows += _slice_rows(pid, pred12, vols["T1C"], zs, cfg.data_range)
            zbest = _montage_slice(pdir, zs)
            if len(montage_rows) < 3:
                montage_rows.append(_montage_row(pid, zbest, vols, pred12, variant))
        patients, summary = _write_metrics(tmp, rows, variant, len(inputs.test))
        save_montage(montage_rows, tmp / "montage.png")
    logger.info("evaluated %s on %d test patients: MAE %.2f SSIM %.3f", variant["name"], len(inputs.test), summary["mae"], summary["ssim"])
    if tracker is not None:
        _track(tracker, summary, Path(out_dir))
    return patients
