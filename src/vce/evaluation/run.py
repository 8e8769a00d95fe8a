"""Score a synthesiser (a trained variant, the oracle or the learnability reference) on the test patients.

For each test patient: synthesise the T1C volume on the T2 grid under both inversions
(:data:`~vce.evaluation.synthesisers.INVERSIONS`), write it (``pred/<pid>.nii.gz`` with the
paper's inversion, ``pred_cal/<pid>.nii.gz`` with the deployable calibration; 12-bit), then
score the patient's stored slices (those the split kept: body content and a complete field of
view in every modality) with :func:`vce.metrics.scoring.score_patient`: whole slice (the
paper's), inside the body, inside the tumour, the air check, texture against the noisy and the
noise-free ground truth, gradient-direction agreement and tumour enhancement. Metrics on the
calibrated prediction carry the suffix ``_cal``; ground-truth columns (``gt_*``, ``gtclean_*``)
do not depend on the inversion and appear once. Every region and column is defined in
``docs/metrics.md``.

Outputs in ``<out>`` (atomic): ``pred/``, ``pred_cal/``, ``metrics_slices.csv``,
``metrics_patients.csv``, ``summary.json``, ``variant.json``, ``montage.png`` (first three
patients), ``cases.npz`` (each patient's most-tumour slice: inputs, truth, predictions, masks;
the report draws all models from it with one window), ``psd.csv`` (radially averaged power
spectra, mean over slices).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from vce.config import EvaluateConfig
from vce.evaluation.synthesisers import INVERSIONS, Case, GeneratorSynthesiser, Oracle, Synthesiser
from vce.io.atomic import atomic_dir, write_json
from vce.io.errors import VCEInputError
from vce.io.nifti import PATIENT_FILES, read_volume, write_volume
from vce.metrics.batched import radial_psd
from vce.metrics.scoring import GT_METRICS, score_patient
from vce.prep.normalization import apply_calibration
from vce.prep.slicing import body_mask
from vce.reporting.montage import save_montage
from vce.tracking import Tracker

logger = logging.getLogger(__name__)

CASES_NPZ = "cases.npz"
#: Patient columns that do not depend on the inversion (kept once, without a suffix).
INVERSION_FREE = frozenset(GT_METRICS) | {"n_tumour_voxels"}
PSD_CSV = "psd.csv"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise VCEInputError(f"{path}: missing {what}")
    return path


@dataclass
class TestSet:
    """The split's test patients and what scoring them needs."""

    registered: Path
    params: dict[str, Any]
    geometry: dict[str, Any]
    patients: list[str]
    image_size: int


def load_test_set(registered_dir: Path, split_dir: Path, norm_dir: Path) -> TestSet:
    """The normalisation parameters, split geometry and test patients (errors name the missing file)."""
    params = json.loads(_need(norm_dir / "params.json", "normalisation parameters").read_text())
    geometry = json.loads(_need(split_dir / "geometry.json", "split geometry").read_text())
    manifest = pd.read_csv(_need(split_dir / "manifest.csv", "split manifest"), dtype={"patient": str})
    info = json.loads(_need(split_dir / "split.json", "split summary").read_text())
    test = manifest.loc[manifest.split == "test", "patient"].tolist()
    if not test:
        raise VCEInputError(f"{split_dir / 'manifest.csv'}: no test patients")
    return TestSet(registered_dir, params, geometry, test, int(info["image_size"]))


def _optional(path: Path, what: str, dtype: Any) -> np.ndarray | None:
    return sitk.GetArrayFromImage(read_volume(path, what=what, allow_constant=True)).astype(dtype) if path.is_file() else None


@dataclass
class Truth:
    """A patient's reference images on the T2 grid: (z, y, x); masks bool; clean / wm may be absent."""

    t1c: np.ndarray
    clean: np.ndarray | None
    body: np.ndarray
    tumour: np.ndarray
    wm: np.ndarray | None


def load_case(ts: TestSet, pid: str) -> tuple[Case, Truth, sitk.Image]:
    """One test patient's :class:`Case` (both inversions' T1C statistics), its :class:`Truth` and T2 image."""
    pdir = ts.registered / pid
    imgs = {m: read_volume(pdir / PATIENT_FILES[m], what=f"registered {m} of patient {pid}") for m in ("T1", "T2", "T1C")}
    vols = {m: sitk.GetArrayFromImage(img).astype(np.float32) for m, img in imgs.items()}
    if pid not in ts.params.get("patients", {}):
        raise VCEInputError(f"normalisation parameters have no entry for test patient {pid}")
    st = ts.params["patients"][pid]
    t1c_stats = {"gt": (float(st["T1C"]["mu"]), float(st["T1C"]["sd"])),
                 "cal": apply_calibration(ts.params["calibration"], st)}
    tumour = _optional(pdir / PATIENT_FILES["mask"], f"tumour mask of patient {pid}", bool)
    truth = Truth(
        t1c=vols["T1C"],
        clean=_optional(pdir / PATIENT_FILES["T1C_clean"], f"clean T1C of patient {pid}", np.float32),
        body=body_mask(vols["T2"]),
        tumour=tumour if tumour is not None else np.zeros(vols["T2"].shape, bool),
        wm=_optional(pdir / PATIENT_FILES["wm"], f"white-matter mask of patient {pid}", bool),
    )
    return Case(pid, vols, st, t1c_stats, ts.image_size), truth, imgs["T2"]


def score_case(preds: dict[str, np.ndarray], truth: Truth, zs: list[int], cfg: EvaluateConfig) -> tuple[pd.DataFrame, dict[str, float]]:
    """Slice rows and the patient row of one patient, both inversions (``_cal`` suffix), at slices ``zs``."""
    z = np.asarray(zs, dtype=int)
    sel = (lambda a: None if a is None else a[z])  # noqa: E731
    slices, patient = None, {}
    for inv, suffix in INVERSIONS.items():
        s, p = score_patient(
            preds[inv][z], truth.t1c[z], body=truth.body[z], tumour=truth.tumour[z], wm=sel(truth.wm),
            gt_clean=sel(truth.clean), data_range=cfg.data_range, ring_px=cfg.ring_px,
            enh_threshold=cfg.enh_threshold, edge_quantile=cfg.edge_quantile,
        )
        keep = [c for c in s.columns if not (suffix and c in GT_METRICS)]
        s = s[keep].rename(columns={c: c + suffix for c in keep})
        p = {k + suffix: v for k, v in p.items() if not (suffix and k in INVERSION_FREE) and k != "n_slices"}
        slices = s if slices is None else pd.concat([slices, s], axis=1)
        patient.update(p)
    slices.insert(0, "slice", z)
    patient["n_slices"] = len(z)
    return slices, patient


def _montage_z(truth: Truth, zs: list[int]) -> int:
    """The slice shown for a patient: the most tumour (if any), else the middle scored slice."""
    counts = [int(truth.tumour[z].sum()) for z in zs]
    return zs[int(np.argmax(counts))] if max(counts) > 0 else zs[len(zs) // 2]


class _Collector:
    """What the loop over patients accumulates: metric rows, the case slices, spectra, montage rows."""

    def __init__(self) -> None:
        self.slices: list[pd.DataFrame] = []
        self.patients: list[dict[str, Any]] = []
        self.cases: dict[str, np.ndarray] = {}
        self.psd: dict[str, list[np.ndarray]] = {"pred": [], "pred_cal": [], "gt": [], "gt_clean": []}
        self.freq: np.ndarray | None = None
        self.montage: list[tuple[str, dict[str, np.ndarray]]] = []

    def add(self, name: str, case: Case, truth: Truth, preds: dict[str, np.ndarray], zs: list[int],
            scored: tuple[pd.DataFrame, dict[str, float]]) -> None:
        pid = case.pid
        s, p = scored
        s.insert(0, "patient", pid)
        self.slices.append(s)
        self.patients.append({"patient": pid, **p})
        zb = _montage_z(truth, zs)
        for key, arr in (("T1", case.volumes["T1"]), ("T2", case.volumes["T2"]), ("GT", truth.t1c),
                         ("pred", preds["gt"]), ("pred_cal", preds["cal"]), ("tumour", truth.tumour)):
            self.cases[f"{pid}/{key}"] = arr[zb]
        self.cases[f"{pid}/z"] = np.asarray(zb)
        z = np.asarray(zs)
        for key, arr in (("pred", preds["gt"]), ("pred_cal", preds["cal"]), ("gt", truth.t1c),
                         ("gt_clean", truth.clean if truth.clean is not None else None)):
            if arr is not None:
                self.freq, psd = radial_psd(arr[z])
                self.psd[key].append(psd)
        if len(self.montage) < 3:
            err = np.abs(preds["gt"][zb] - truth.t1c[zb])
            self.montage.append((f"{pid} z={zb}", {"T1": case.volumes["T1"][zb], "T2": case.volumes["T2"][zb],
                                                    "T1C (real)": truth.t1c[zb], f"VCE ({name})": preds["gt"][zb],
                                                    "|error|": err}))

    def psd_frame(self) -> pd.DataFrame:
        out = {"freq": self.freq}
        for k, v in self.psd.items():
            out[k] = np.concatenate(v).mean(axis=0) if v else np.full(len(self.freq), np.nan)
        return pd.DataFrame(out)


def _write_prediction(pred: np.ndarray, t2: sitk.Image, path: Path) -> None:
    """A (z, y, x) 12-bit prediction as NIfTI with the T2's geometry."""
    img = sitk.GetImageFromArray(pred.astype(np.int16))
    img.CopyInformation(t2)
    write_volume(img, path)


def _write_outputs(tmp: Path, col: _Collector, info: dict[str, Any]) -> dict[str, float]:
    """The metric files, ``summary.json``, ``variant.json``, the case slices, spectra and montage; returns the summary."""
    slices = pd.concat(col.slices, ignore_index=True)
    slices.to_csv(tmp / "metrics_slices.csv", index=False, float_format="%.6g")
    patients = pd.DataFrame(col.patients)
    patients.to_csv(tmp / "metrics_patients.csv", index=False, float_format="%.6g")
    summary = {k: float(patients[k].mean()) for k in patients.columns if k != "patient"}
    write_json(tmp / "summary.json", {"variant": info, "n_patients": len(patients), "n_slices": len(slices),
                                      "mean_over_patients": summary})
    write_json(tmp / "variant.json", info)
    np.savez_compressed(tmp / CASES_NPZ, **col.cases)
    col.psd_frame().to_csv(tmp / PSD_CSV, index=False, float_format="%.6g")
    save_montage(col.montage, tmp / "montage.png")
    return summary


def evaluate_synthesiser(synth: Synthesiser, ts: TestSet, out_dir: str | Path, cfg: EvaluateConfig) -> pd.DataFrame:
    """Predict and score every test patient of ``ts`` with ``synth``; writes ``out_dir``; returns per-patient metrics."""
    col = _Collector()
    with atomic_dir(out_dir) as tmp:
        for sub in ("pred", "pred_cal"):
            (tmp / sub).mkdir()
        for pid in ts.patients:
            case, truth, t2 = load_case(ts, pid)
            zs = [int(z) for z in ts.geometry[pid]["z"]]
            preds = synth(case)
            _write_prediction(preds["gt"], t2, tmp / "pred" / f"{pid}.nii.gz")
            _write_prediction(preds["cal"], t2, tmp / "pred_cal" / f"{pid}.nii.gz")
            col.add(synth.name, case, truth, preds, zs, score_case(preds, truth, zs, cfg))
        summary = _write_outputs(tmp, col, synth.info)
    logger.info("evaluated %s on %d test patients: MAE %.1f (body %.1f), SSIM %.3f, enhancement ratio %.2f (truth %.2f)",
                synth.name, len(ts.patients), summary["mae"], summary["mae_body"], summary["ssim"],
                summary.get("enh_ratio_ring", float("nan")), summary.get("gt_enh_ratio_ring", float("nan")))
    return pd.DataFrame(col.patients)


def logged_metrics(summary: dict[str, float]) -> dict[str, float]:
    """The metrics a variant's run logs: every scored metric under its plain name (as in ``metrics.json``),
    ground-truth columns and undefined values left out."""
    return {k: v for k, v in summary.items() if not k.startswith(("gt_", "gtclean_")) and np.isfinite(v)}


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
    from vce.models.checkpoint import load_generator

    model_dir = Path(model_dir)
    generator, meta = load_generator(_need(model_dir / "checkpoint.pt", "checkpoint (run `vce train` first)"))
    ts = load_test_set(Path(registered_dir), Path(split_dir), Path(norm_dir))
    trained = (meta.get("metadata") or {}).get("image_size")
    if trained is not None and int(trained) != ts.image_size:
        raise VCEInputError(f"{model_dir / 'checkpoint.pt'}: trained at {trained}x{trained} but the split "
                            f"{split_dir} stores {ts.image_size}x{ts.image_size} slices; evaluate it on its own split")
    patients = evaluate_synthesiser(GeneratorSynthesiser(generator, meta["variant"]), ts, out_dir, cfg)
    if tracker is not None:
        summary = json.loads((Path(out_dir) / "summary.json").read_text())["mean_over_patients"]
        tracker.log_metrics(logged_metrics(summary))
        for f in ("montage.png", "metrics_patients.csv", "metrics_slices.csv"):
            tracker.log_artifact(Path(out_dir) / f, "evaluation")
    return patients


def evaluate_references(
    registered_dir: str | Path, split_dir: str | Path, norm_dir: str | Path, out_dir: str | Path,
    cfg: EvaluateConfig, seed: int,
) -> Path:
    """The reference rows: ``<out>/oracle/`` and ``<out>/learnability/`` (each an evaluation directory like
    a variant's), ``<out>/learnability_auc.csv`` (tumour vs ring AUC from T1, T2 and the true T1C, per
    test patient), ``<out>/fov.csv`` (slices per patient left out for an incomplete field of view) and a copy
    of the split's ``split.json`` (its ``split_id`` is the data version the report names)."""
    from vce import learnability
    from vce.evaluation.synthesisers import RegressorSynthesiser

    registered_dir, split_dir, norm_dir = map(Path, (registered_dir, split_dir, norm_dir))
    ts = load_test_set(registered_dir, split_dir, norm_dir)
    reg = learnability.fit_from_store(norm_dir, split_dir, seed=seed)
    with atomic_dir(out_dir) as tmp:
        evaluate_synthesiser(Oracle(), ts, tmp / "oracle", cfg)
        evaluate_synthesiser(RegressorSynthesiser(reg.predict), ts, tmp / "learnability", cfg)
        _auc_table(ts, cfg).to_csv(tmp / "learnability_auc.csv", index=False, float_format="%.6g")
        _fov_table(split_dir).to_csv(tmp / "fov.csv", index=False)
        shutil.copy2(split_dir / "split.json", tmp / "split.json")  # the data version the report names
    return Path(out_dir)


def _auc_table(ts: TestSet, cfg: EvaluateConfig) -> pd.DataFrame:
    """Per test patient: AUC of tumour vs its ring from T1, T2 and the true T1C (scored slices)."""
    from vce import learnability
    from vce.metrics.enhancement import ring

    rows = []
    for pid in ts.patients:
        case, truth, _ = load_case(ts, pid)
        z = np.asarray(ts.geometry[pid]["z"], dtype=int)
        rg = ring(truth.tumour[z], cfg.ring_px, truth.body[z])
        auc = learnability.input_auc(case.volumes["T1"][z], case.volumes["T2"][z], truth.tumour[z], rg,
                                     t1c=truth.t1c[z])
        rows.append({"patient": pid, **auc})
    return pd.DataFrame(rows)


def _fov_table(split_dir: Path) -> pd.DataFrame:
    """``manifest.csv``'s per-patient slice counts (kept, and left out for an incomplete field of view)."""
    m = pd.read_csv(split_dir / "manifest.csv", dtype={"patient": str})
    cols = [c for c in ("patient", "split", "n_slices", "n_slices_fov_excluded") if c in m.columns]
    return m[cols]
