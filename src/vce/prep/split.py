"""Patient-level train/test split and the 2D slice store.

Layout written to ``<out>``:

```
manifest.csv          patient, split, n_slices, n_slices_fov_excluded, sha256 (of the patient's
                      registered T1, T2, T1C files)
split.json            seed, ratio, fold settings, counts (patients, slices, FOV-excluded slices per
                      split) and split_id (sha256 of the split settings + manifest: a changed
                      input file, fold or slice rule changes it)
geometry.json         per patient: T2 grid (size, spacing, origin, direction), SliceGeometry, kept z
train/  test/         T1.npy T2.npy T1C.npy (float32, scanner units), body.npy tumor.npy (uint8),
                      all (N, S, S) in the same slice order, and index.csv (patient, z)
```
A patient's slices are all in one split (never both). A patient contributes the slices of
:func:`vce.prep.slicing.kept_slices`: enough T2 body (``split.min_body_fraction``) and that body
covered by T1, T2 and T1C (at most ``split.max_fov_missing`` of it exactly 0 in any of them, i.e.
outside a moving scan's field of view); ``n_slices_fov_excluded`` counts the slices the second
condition left out. A patient with no such slice is left out of the split with a warning and
listed under ``excluded`` in ``split.json`` (with the reason); the step fails, naming them all,
when too few patients are left.

Two ways to choose the test patients (both seeded, both by patient):

* hold-out (``split.folds: 0``, the default): ``round(n * test_ratio)`` patients (the paper's
  70:10 with ``test_ratio: 0.125``);
* k-fold (``split.folds: k >= 2``, ``split.fold: i``): the patients are partitioned into k folds
  (a seeded permutation cut into k near-equal parts); fold i is the test set, the other k - 1
  folds train. Running i = 0 .. k-1 uses every patient exactly once as a test patient.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..config import SplitConfig
from ..io.atomic import atomic_dir, ensure_free_space, write_json
from ..io.cohort import list_patients
from ..io.errors import VCEInputError
from ..io.nifti import PATIENT_FILES, read_volume
from .slicing import SliceGeometry, body_mask, kept_slices, to_square

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
STORE_MODALITIES = ("T1", "T2", "T1C")
MANIFEST_COLUMNS = ("patient", "split", "n_slices", "n_slices_fov_excluded", "sha256")


def assign_split(pids: list[str], test_ratio: float, seed: int, folds: int = 0, fold: int = 0) -> dict[str, str]:
    """Seeded patient-level assignment ``{pid: "train" | "test"}``.

    ``folds == 0``: ``round(n * test_ratio)`` (at least 1) patients to test. ``folds >= 2``:
    the patients of fold ``fold`` of :func:`kfold_partition` are the test set (``test_ratio``
    is then unused).
    """
    n = len(pids)
    if folds:
        parts = kfold_partition(pids, folds, seed)
        if not isinstance(fold, (int, np.integer)) or isinstance(fold, bool) or not 0 <= fold < folds:
            raise VCEInputError(f"split.fold must be an integer in [0, {folds - 1}] for {folds} folds, got {fold!r}")
        test = set(parts[int(fold)])
        return {p: ("test" if p in test else "train") for p in sorted(pids)}
    if not 0 < test_ratio < 1:
        raise VCEInputError(f"test_ratio must be in (0, 1), got {test_ratio}")
    n_test = max(1, int(round(n * test_ratio)))
    if n - n_test < 1:
        raise VCEInputError(f"cohort too small to split: {n} patient(s) give {n_test} test and {n - n_test} train")
    order = np.random.default_rng(seed).permutation(sorted(pids))
    test = set(order[:n_test].tolist())
    return {p: ("test" if p in test else "train") for p in sorted(pids)}


def kfold_partition(pids: list[str], folds: int, seed: int) -> list[list[str]]:
    """The patients cut into ``folds`` seeded folds of near-equal size (sizes differ by <= 1).

    A seeded permutation of the sorted ids, split into ``folds`` consecutive parts; each part is
    returned sorted. Same ``(pids, folds, seed)`` -> same folds.
    """
    if not isinstance(folds, (int, np.integer)) or isinstance(folds, bool) or folds < 2:
        raise VCEInputError(f"split.folds must be 0 (off) or an integer >= 2, got {folds!r}")
    if len(set(pids)) != len(pids):
        raise VCEInputError("patient ids are not unique")
    if folds > len(pids):
        raise VCEInputError(f"cohort too small for {folds} folds: {len(pids)} patient(s)")
    order = np.random.default_rng(seed).permutation(sorted(pids))
    return [sorted(part.tolist()) for part in np.array_split(order, folds)]


def file_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_patient(pdir: Path) -> dict[str, np.ndarray | sitk.Image]:
    pid = pdir.name
    vols: dict[str, Any] = {}
    ref = None
    for m in STORE_MODALITIES:
        img = read_volume(pdir / PATIENT_FILES[m], what=f"registered {m} of patient {pid}")
        if ref is None:
            ref = img
        elif img.GetSize() != ref.GetSize():
            raise VCEInputError(f"{pdir / PATIENT_FILES[m]}: size {img.GetSize()} differs from T1's {ref.GetSize()}")
        vols[m] = sitk.GetArrayFromImage(img).astype(np.float32)
    mp = pdir / PATIENT_FILES["mask"]
    vols["tumor"] = (
        sitk.GetArrayFromImage(read_volume(mp, allow_constant=True)).astype(np.uint8)
        if mp.is_file()
        else np.zeros_like(vols["T2"], dtype=np.uint8)
    )
    vols["image"] = ref
    return vols


def grid_of(img: sitk.Image) -> dict[str, Any]:
    return {
        "size": list(img.GetSize()),
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": list(img.GetDirection()),
    }


def _kept_slices(
    registered_dir: Path, pids: list[str], min_body_fraction: float, max_fov_missing: float
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Pass 1: which slices each patient contributes (:func:`kept_slices` over T1, T2, T1C), so the
    store can be preallocated as memory-mapped arrays: memory does not grow with cohort size.

    Returns (kept z per patient, number of slices left out by the field-of-view rule per patient).
    """
    kept: dict[str, np.ndarray] = {}
    fov_excluded: dict[str, int] = {}
    for pid in pids:
        vols = load_patient(registered_dir / pid)
        kept[pid], fov_excluded[pid] = kept_slices(
            {m: vols[m] for m in STORE_MODALITIES}, min_body_fraction, max_fov_missing
        )
        if fov_excluded[pid]:
            logger.info(
                "split: patient %s: %d slice(s) left out, body not covered by every modality's field of view "
                "(> %.3g zero-filled); %d kept", pid, fov_excluded[pid], max_fov_missing, len(kept[pid]),
            )
    return kept, fov_excluded


def _without_slices(kept: dict[str, np.ndarray], fov_excluded: dict[str, int]) -> dict[str, str]:
    """``{pid: reason}`` of the patients with no slice to contribute (left out of the split)."""
    return {
        pid: "no slice with body content"
        + (f" covered by every modality's field of view ({fov_excluded[pid]} left out)" if fov_excluded[pid] else "")
        for pid, z in kept.items() if len(z) == 0
    }


def _open_stores(tmp: Path, n_slices: dict[str, int], S: int) -> dict[str, dict[str, np.memmap]]:
    """Create ``<tmp>/<split>/`` and its (n, S, S) memory-mapped arrays: the modalities float32, body and tumour uint8."""
    stores: dict[str, dict[str, np.memmap]] = {}
    for s in SPLITS:
        n = n_slices[s]
        (tmp / s).mkdir()
        stores[s] = {
            m: np.lib.format.open_memmap(tmp / s / f"{m}.npy", mode="w+", dtype=np.float32, shape=(n, S, S))
            for m in STORE_MODALITIES
        }
        for m in ("body", "tumor"):
            stores[s][m] = np.lib.format.open_memmap(tmp / s / f"{m}.npy", mode="w+", dtype=np.uint8, shape=(n, S, S))
    return stores


def _store_patient(
    store: dict[str, np.memmap], i0: int, vols: dict[str, Any], z: np.ndarray, geom: SliceGeometry
) -> None:
    """Write a patient's kept slices ``z``, squared by ``geom``, into rows ``i0 .. i0 + len(z)`` of ``store``."""
    i1 = i0 + len(z)
    for m in STORE_MODALITIES:
        store[m][i0:i1] = to_square(vols[m][z], geom)
    body = body_mask(vols["T2"])
    store["body"][i0:i1] = to_square(body[z].astype(np.float32), geom, order=0) > 0.5
    store["tumor"][i0:i1] = to_square(vols["tumor"][z].astype(np.float32), geom, order=0) > 0.5


def _split_settings(cfg: SplitConfig, seed: int) -> dict[str, Any]:
    """The settings that, with the manifest, identify the split (:func:`split_identity`)."""
    return {
        "seed": int(seed),
        "test_ratio": float(cfg.test_ratio),
        "folds": int(cfg.folds),
        "fold": int(cfg.fold),
        "image_size": int(cfg.image_size),
        "min_body_fraction": float(cfg.min_body_fraction),
        "max_fov_missing": float(cfg.max_fov_missing),
    }


def _split_summary(
    cfg: SplitConfig, seed: int, manifest: pd.DataFrame, cursor: dict[str, int], split_id: str
) -> dict[str, Any]:
    """The content of ``split.json``."""
    return {
        "seed": seed,
        "test_ratio": cfg.test_ratio if not cfg.folds else None,
        "folds": int(cfg.folds),
        "fold": int(cfg.fold) if cfg.folds else None,
        "image_size": cfg.image_size,
        "patients": {s: int((manifest.split == s).sum()) for s in SPLITS},
        "slices": {s: int(cursor[s]) for s in SPLITS},
        "max_fov_missing": float(cfg.max_fov_missing),
        "slices_fov_excluded": {s: int(manifest.loc[manifest.split == s, "n_slices_fov_excluded"].sum()) for s in SPLITS},
        "split_id": split_id,
    }


def _excluded_by_register(registered_dir: Path) -> dict[str, str]:
    """``{pid: reason}`` of the patients ``vce register`` left out of ``registered_dir`` ({} when none or unknown)."""
    import json

    try:
        excluded = json.loads((registered_dir / "excluded.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in excluded.items()} if isinstance(excluded, dict) else {}


def _registered_patients(registered_dir: Path) -> list[str]:
    """The patients of a registered cohort; when register excluded them all, the error says so and
    where the QC and reasons are."""
    excluded = _excluded_by_register(registered_dir)
    if excluded and registered_dir.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in registered_dir.iterdir()):
        raise VCEInputError(
            f"{registered_dir}: no registered patient to split: register excluded all {len(excluded)} patient(s) "
            f"({_register_record(registered_dir)}): " + "; ".join(f"{p}: {why}" for p, why in excluded.items())
        )
    return list_patients(registered_dir)


def _register_record(registered_dir: Path) -> str:
    return f"QC in {registered_dir / 'qc.csv'}, reasons in {registered_dir / 'excluded.json'}"


def _assign(registered_dir: Path, pids: list[str], empty: dict[str, str], cfg: SplitConfig, seed: int) -> dict[str, str]:
    """The split assignment of the patients that have slices (``pids`` less ``empty``); when too
    few are left, the error names the patients register and the slice rule left out, and why."""
    usable = [p for p in pids if p not in empty]
    by_register = _excluded_by_register(registered_dir)
    try:
        if not usable:
            raise VCEInputError(f"{registered_dir}: no patient has a slice to split")
        return assign_split(usable, cfg.test_ratio, seed, cfg.folds, cfg.fold)
    except VCEInputError as exc:
        why = [f"{len(empty)} patient(s) without a usable slice: " + "; ".join(f"{p}: {r}" for p, r in empty.items())] if empty else []
        if by_register:
            why.append(f"register excluded {len(by_register)} patient(s): {', '.join(by_register)}; {_register_record(registered_dir)}")
        if not why:
            raise
        raise VCEInputError(f"{exc} ({'; '.join(why)})") from exc


def split_cohort(registered_dir: str | Path, out_dir: str | Path, cfg: SplitConfig, seed: int) -> pd.DataFrame:
    """Split ``registered_dir`` by patient and write the slice store (atomic). Returns the manifest.

    The registered cohort first passes validate's integrity pass
    (:func:`vce.prep.validate.check_integrity`: truncated headers, spacing, intensities in
    [0, 4095], one patient under two ids), before anything is written."""
    from .validate import check_integrity

    registered_dir = Path(registered_dir)
    pids = _registered_patients(registered_dir)
    check_integrity(registered_dir, pids, step="split")
    S = cfg.image_size
    kept, fov_excluded = _kept_slices(registered_dir, pids, cfg.min_body_fraction, cfg.max_fov_missing)
    empty = _without_slices(kept, fov_excluded)
    assignment = _assign(registered_dir, pids, empty, cfg, seed)
    for pid, why in empty.items():
        logger.warning("split: patient %s left out of the split: %s (%s)", pid, why, registered_dir / pid)
    pids = [p for p in pids if p not in empty]
    rows, geometry = [], {}
    # a memory-mapped write to a full disk dies of SIGBUS, half-written: check the room first
    n_all = sum(len(kept[p]) for p in pids)
    ensure_free_space(Path(out_dir).parent, n_all * S * S * (4 * len(STORE_MODALITIES) + 2), "the slice store",
                      final=out_dir)
    with atomic_dir(out_dir) as tmp:
        stores = _open_stores(tmp, {s: sum(len(kept[p]) for p in pids if assignment[p] == s) for s in SPLITS}, S)
        cursor = {s: 0 for s in SPLITS}
        index: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
        for pid in pids:
            s, z = assignment[pid], kept[pid]
            vols = load_patient(registered_dir / pid)
            geom = SliceGeometry.for_shape(vols["T2"].shape[1:], S)
            _store_patient(stores[s], cursor[s], vols, z, geom)
            cursor[s] += len(z)
            index[s] += [(pid, int(k)) for k in z]
            files = [registered_dir / pid / PATIENT_FILES[m] for m in STORE_MODALITIES]
            rows.append({"patient": pid, "split": s, "n_slices": len(z), "n_slices_fov_excluded": fov_excluded[pid],
                         "sha256": file_hash(files)})
            geometry[pid] = {"grid": grid_of(vols["image"]), "slices": geom.to_dict(), "z": [int(k) for k in z]}
        for s in SPLITS:
            for arr in stores[s].values():
                arr.flush()
            pd.DataFrame(index[s], columns=["patient", "z"]).to_csv(tmp / s / "index.csv", index=False)
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        manifest.to_csv(tmp / "manifest.csv", index=False)
        split_id = split_identity(_split_settings(cfg, seed), (tmp / "manifest.csv").read_bytes())
        summary = _split_summary(cfg, seed, manifest, cursor, split_id)
        if empty:  # only then, so that a split with none keeps its bytes (dvc.lock)
            summary["excluded"] = empty
        write_json(tmp / "split.json", summary)
        write_json(tmp / "geometry.json", geometry)
        del stores
    logger.info("split %s: %s", split_id[:12], summary)
    return manifest


def split_identity(settings: dict[str, Any], manifest_csv: bytes) -> str:
    """sha256 over the split settings (canonical JSON) and the manifest bytes.

    The manifest lists every patient's split and the sha256 of its input files, so a changed
    input, seed, ratio or fold gives a different id.
    """
    import json

    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(b"\n")
    h.update(manifest_csv)
    return h.hexdigest()


def load_geometry(split_dir: str | Path) -> dict[str, Any]:
    import json

    return json.loads((Path(split_dir) / "geometry.json").read_text())
