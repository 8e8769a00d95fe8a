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
    generator, meta = load_generator(_need(model_dir / "checkpoint.pt", "checkpoint (run `vce train` first)"))
    variant = meta["variant"]
    params = json.loads(_need(norm_dir / "params.json", "normalisation parameters").read_text())
    geometry = json.loads(_need(split_dir / "geometry.json", "split geometry").read_text())
    manifest = pd.read_csv(_need(split_dir / "manifest.csv", "split manifest"))
    split_info = json.loads(_need(split_dir / "split.json", "split summary").read_text())
    test = manifest.loc[manifest.split == "test", "patient"].tolist()
    rows: list[dict[str, Any]] = []
    montage_rows = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "pred").mkdir()
        for pid in test:
            pdir = registered_dir / pid
            imgs = {m: read_volume(pdir / PATIENT_FILES[m], what=f"registered {m} of patient {pid}") for m in ("T1", "T2", "T1C")}
            t2_img = imgs["T2"]
            vols = {m: sitk.GetArrayFromImage(img).astype(np.float32) for m, img in imgs.items()}
            st = params["patients"][pid]
            t1c = (st["T1C"]["mu"], st["T1C"]["sd"])
            pred = synthesize_t1c(generator, variant, vols, st, t1c, int(split_info["image_size"]))
            pred12 = to_uint12(pred)
            img = sitk.GetImageFromArray(pred12)
            img.CopyInformation(t2_img)
            write_volume(img, tmp / "pred" / f"{pid}.nii.gz")
            gt = vols["T1C"]
            for z in geometry[pid]["z"]:
                m = slice_metrics(pred12[z].astype(np.float64), gt[z].astype(np.float64), data_range=cfg.data_range)
                rows.append({"patient": pid, "slice": int(z), **m})
            mask_path = pdir / PATIENT_FILES["mask"]
            tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) if mask_path.is_file() else None
            zs = geometry[pid]["z"]
            zbest = zs[int(np.argmax([tumour[z].sum() for z in zs]))] if tumour is not None else zs[len(zs) // 2]
            if len(montage_rows) < 3:
                montage_rows.append((f"{pid} z={zbest}", {
                    "T1": vols["T1"][zbest], "T2": vols["T2"][zbest], "T1C (real)": gt[zbest],
                    f"VCE ({variant['name']})": pred12[zbest], "|error|": np.abs(pred12[zbest] - gt[zbest]),
                }))
        slices = pd.DataFrame(rows)
        slices.to_csv(tmp / "metrics_slices.csv", index=False, float_format="%.6g")
        patients = slices.drop(columns="slice").groupby("patient", sort=True).mean().reset_index()
        patients.to_csv(tmp / "metrics_patients.csv", index=False, float_format="%.6g")
        summary = {k: float(patients[k].mean()) for k in patients.columns if k != "patient"}
        write_json(tmp / "summary.json", {"variant": variant, "n_patients": len(test), "n_slices": len(slices), "mean_over_patients": summary})
        write_json(tmp / "variant.json", variant)
        save_montage(montage_rows, tmp / "montage.png")
    logger.info("evaluated %s on %d test patients: MAE %.2f SSIM %.3f", variant["name"], len(test), summary["mae"], summary["ssim"])
    if tracker is not None:
        tracker.log_metrics({f"test_{k}": v for k, v in summary.items()})
        for f in ("montage.png", "metrics_patients.csv", "metrics_slices.csv"):
            tracker.log_artifact(Path(out_dir) / f, "evaluation")
    return patients
