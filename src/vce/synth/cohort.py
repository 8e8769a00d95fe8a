"""Synthetic cohort: per-patient simulation of the paper's T1 / T2 / T1C protocol and the writer.

Patient ``i`` depends only on ``(seed, i)``: every random draw comes from
``np.random.SeedSequence([seed, i])`` (independent child streams for anatomy, tissues, lesions,
vessels, texture, motion and scanner), so the cohort is bit-for-bit reproducible and patients can
be simulated in any order or in parallel.

Per scan the pipeline is: atlas tissue fractions -> patient deformation D -> motion M (rigid + smooth
B-spline, see motion.py) of the scan (T2: none) resampled by SimpleITK onto the acquisition grid (sub-sampled through the slice
thickness), lesions and vessels evaluated analytically at the same patient-space points, signal
equation per compartment mixed by volume fraction, slice-profile average, bias field, Rician
noise, 12-bit gain.

Besides the scans, each patient gets ``T1C_clean`` (the T1C through the same bias, gain and 12-bit
rounding but without noise; it draws no random numbers, so the other outputs do not depend on it)
and ``wm`` (normal-appearing white matter on the T2 grid, :func:`_wm_mask`): the evaluation's
noise-free truth and reference region (docs/synthetic_cohort.md).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

from ..config import SynthConfig, check_int
from ..io.atomic import atomic_dir, write_json
from ..io.nifti import PATIENT_FILES, to_uint12, write_volume
from . import lesions as lesions_mod
from . import motion as motion_mod
from .anatomy import (
    CHANNELS, Atlas, PatientBrain, SmoothNoise, Tubes, atlas_images, load_atlas, random_deformation, sample_vessels,
    set_atlas,
)
from .lesions import Lesion, sample_lesions
from .signal import SEQUENCES, Sequence, bias_field, rician
from .tissues import LABELS, PLASMA_GD_MM, R1_BLOOD, R1_TISSUE, R2_BLOOD, R2_TISSUE, PatientTissues, sample_patient_tissues, tissue_table

logger = logging.getLogger(__name__)

#: Scans in acquisition order (also the order of random draws of the scanner stream).
SCANS: tuple[str, ...] = ("T2", "T1", "T1C")
#: Compartments mixed into the signal, in label order (label 0 is air).
COMPARTMENTS: tuple[str, ...] = LABELS[1:]
TEXTURE_AMPLITUDE = 0.03
BIAS_AMPLITUDE = 0.06
MONTAGE_ROWS = 4
#: Normal-appearing white matter (wm_mask.nii.gz): WM voxel fraction at least this ...
WM_MIN_FRACTION = 0.9
#: ... and farther than this many voxels (in-plane) from the lesion,
WM_LESION_MARGIN_PX = 2
#: the lesion being every voxel whose summed fraction of these compartments exceeds LESION_MIN_FRACTION.
LESION_COMPARTMENTS: tuple[str, ...] = ("enhancing", "nonenhancing", "necrosis", "oedema")
LESION_MIN_FRACTION = 0.01


def scan_snr(cfg: SynthConfig, scan: str) -> float:
    """White-matter SNR of one scan ("T1", "T2" or "T1C") from ``synth.snr_t1 / snr_t2 / snr_t1c``."""
    return float({"T1": cfg.snr_t1, "T2": cfg.snr_t2, "T1C": cfg.snr_t1c}[scan])


def patient_id(index: int) -> str:
    return f"P{index + 1:03d}"


def validate(cfg: SynthConfig, seed: int = 0, workers: int = 1) -> None:
    """Raise ValueError naming the first bad argument. The settings themselves are checked when a
    :class:`SynthConfig` is made (``vce.config``); ``seed`` and ``workers`` are not config fields."""
    if not isinstance(cfg, SynthConfig):
        raise ValueError(f"cfg must be a SynthConfig, got {type(cfg).__name__}")
    check_int(seed, "seed", 0)
    check_int(workers, "workers", 1)


# ------------------------------------------------------------------------------------------------
# geometry


def t2_grid(cfg: SynthConfig, atlas: Atlas) -> sitk.Image:
    """Reference image of the T2 acquisition grid: identity direction, centred at the brain centre."""
    size = [int(cfg.matrix[0]), int(cfg.matrix[1]), int(cfg.n_slices)]
    spacing = [float(s) for s in cfg.spacing_mm]
    origin = [c - s * (n - 1) / 2.0 for c, s, n in zip(atlas.centre_mm, spacing, size)]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(spacing)
    ref.SetOrigin(origin)
    ref.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return ref


def subsampling(spacing_mm) -> tuple[int, int, int]:
    """Sub-samples per voxel and axis: the 2 mm template is sampled at <= ~2.5 mm over each voxel."""
    return tuple(max(1, int(float(s) / 2.0 + 0.25)) for s in spacing_mm)


def _fine_grid(ref: sitk.Image, nsub) -> tuple[sitk.Image, np.ndarray]:
    size = [n * k for n, k in zip(ref.GetSize(), nsub)]
    spacing = [s / k for s, k in zip(ref.GetSpacing(), nsub)]
    origin = [o - s / 2.0 + fs / 2.0 for o, s, fs in zip(ref.GetOrigin(), ref.GetSpacing(), spacing)]
    fine = sitk.Image(size, sitk.sitkUInt8)
    fine.SetSpacing(spacing)
    fine.SetOrigin(origin)
    fine.SetDirection(ref.GetDirection())
    axes = [o + s * np.arange(n) for o, s, n in zip(origin, spacing, size)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    return fine, pts


def _block_mean(a: np.ndarray, shape_zyx, nsub) -> np.ndarray:
    nz, ny, nx = shape_zyx
    sx, sy, sz = nsub
    if (sx, sy, sz) == (1, 1, 1):
        return a.reshape(nz, ny, nx)
    return a.reshape(nz, sz, ny, sy, nx, sx).mean(axis=(1, 3, 5))


# ------------------------------------------------------------------------------------------------
# one patient


@dataclass
class PatientResult:
    pid: str
    images: dict[str, sitk.Image]  # "T1", "T2", "T1C", "T1C_clean" (int16, 0-4095), "mask", "wm" (uint8)
    motion: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    maps: dict[str, np.ndarray] | None = None  # per scan: dominant-compartment label (z, y, x)
    motion_transforms: dict[str, sitk.Transform] | None = None  # "T1", "T1C": true T2->scan transform M


#: The tumour's compartments (gross tumour = their sum) and the per-voxel fields of the viable tumour.
TUMOUR_COMPARTMENTS: tuple[str, ...] = ("enhancing", "nonenhancing", "necrosis")
VIABLE_COMPARTMENTS: tuple[str, ...] = ("enhancing", "nonenhancing")


def _lesion_fields(q: np.ndarray, lesions) -> dict[str, np.ndarray]:
    """Tumour fractions (``core``, ``enhancing``, ``nonenhancing``), ``oedema_extent``, and the
    viable tumour's ``uptake`` and ``h`` at ``q`` (N, 3); where lesions overlap each voxel takes
    the maximum fraction, and uptake / h of the lesion with the most viable tumour there."""
    n = len(q)
    out = {k: np.zeros(n) for k in ("core", "enhancing", "nonenhancing", "oedema_extent", "h")}
    out["uptake"] = np.ones(n)
    for les in lesions:
        idx = np.flatnonzero(((q - les.centre) ** 2).sum(1) < les.extent_mm() ** 2)
        if len(idx) == 0:
            continue
        ev = les.evaluate(q[idx])
        take = ev["enhancing"] + ev["nonenhancing"] > out["enhancing"][idx] + out["nonenhancing"][idx]
        for k in ("uptake", "h"):
            out[k][idx[take]] = ev[k][take]
        for k in ("core", "enhancing", "nonenhancing", "oedema_extent"):
            out[k][idx] = np.maximum(out[k][idx], ev[k])
    return out


def _compartments(fr: np.ndarray, q: np.ndarray, lesions, tubes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Volume fraction of every compartment at the patient-space points ``q``, and the viable
    tumour's per-voxel fields (``uptake``, ``h``)."""
    f = {name: fr[:, i].astype(np.float64) for i, name in enumerate(CHANNELS)}
    les = _lesion_fields(q, lesions)
    core, enh, ne, ext = les["core"], les["enhancing"], les["nonenhancing"], les["oedema_extent"]
    total = core + enh + ne
    gross = np.minimum(total, 1.0)
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-9), 1.0)
    core, enh, ne = core * scale, enh * scale, ne * scale
    keep = 1.0 - gross
    for name in CHANNELS:
        f[name] *= keep
    # oedema replaces white matter (and half of the grey matter) around the tumour
    w = np.clip((ext - gross) / np.maximum(keep, 1e-6), 0.0, 1.0)
    oedema = f["wm"] * w + f["gm"] * 0.5 * w
    f["wm"] *= 1.0 - w
    f["gm"] *= 1.0 - 0.5 * w
    art, sin = tubes.fractions(q)
    v = np.minimum(art.astype(np.float64) + sin, 1.0)
    vs = np.where(art + sin > 1.0, 1.0 / np.maximum(art + sin, 1e-9), 1.0)
    for name in CHANNELS:
        f[name] *= 1.0 - v
    f.update(artery=art * vs, sinus=sin * vs, enhancing=enh * (1 - v), nonenhancing=ne * (1 - v),
             necrosis=core * (1 - v), oedema=oedema * (1 - v))
    return {k: f[k] for k in COMPARTMENTS}, {"uptake": les["uptake"], "h": les["h"]}


def _signal(seq, tissues: PatientTissues, frac: dict[str, np.ndarray], fields: dict[str, np.ndarray]) -> np.ndarray:
    """Noise-free signal: volume-fraction-weighted sum of the compartments' signals (slow exchange).

    The viable tumour's relaxation varies per voxel with its tissue field ``h`` (T1 x (1 +
    T1_PER_H h), T2 x (1 + T2_PER_H h)) and the enhancing tumour's gadolinium with ``uptake``."""
    out = np.zeros(len(fields["uptake"]))
    for name in COMPARTMENTS:
        t = tissues[name]
        fk = frac[name]
        if name in VIABLE_COMPARTMENTS:
            sel = np.flatnonzero(fk > 1e-6)
            h = fields["h"][sel]
            t1_0 = t.t1_ms * (1.0 + lesions_mod.T1_PER_H * h)
            t2_0 = t.t2_ms * (1.0 + lesions_mod.T2_PER_H * h)
            conc = 0.0
            if seq.contrast:
                conc = t.gd_mM * (fields["uptake"][sel] if name == "enhancing" else 1.0)
            t1, t2 = t.relaxation(conc, t1_0, t2_0)
            out[sel] += fk[sel] * seq.signal(t.pd, t1, t2)
            continue
        t1, t2 = t.relaxation(t.gd_mM if seq.contrast else 0.0)
        s = float(seq.signal(t.pd, t1, t2))
        if seq.kind == "SE":
            s *= t.flow_void
        out += fk * s
    return out


class _Streams(NamedTuple):
    """One patient's independent random streams: the children of ``SeedSequence([seed, index])``
    in spawn order."""

    anatomy: np.random.Generator
    tissues: np.random.Generator
    lesions: np.random.Generator
    vessels: np.random.Generator
    texture: np.random.Generator
    motion: np.random.Generator
    scanner: np.random.Generator


def _patient_streams(seed: int, index: int) -> _Streams:
    """The seven generators of patient ``index`` (it depends on ``(seed, index)`` only)."""
    streams = np.random.SeedSequence([int(seed), int(index)]).spawn(7)
    return _Streams(*(np.random.default_rng(s) for s in streams))


def _check_index(index: object) -> None:
    """Raise ValueError unless ``index`` is a non-negative integer (a bool is not one)."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ValueError(f"patient index must be a non-negative integer, got {index!r}")


@dataclass
class _Patient:
    """Everything drawn for one patient before the scanner: anatomy and inter-scan motion."""

    deformation: sitk.Transform  # patient -> template (SimpleITK resampling convention)
    deform_info: dict[str, object]
    tissues: PatientTissues
    lesions: list[Lesion]
    tubes: Tubes
    vessel_info: dict[str, Any]
    texture: SmoothNoise  # relative tissue-signal texture, a field over patient space (mm)
    rigid: dict[str, sitk.Euler3DTransform]  # "T1", "T1C": rigid part of M
    nonrigid: dict[str, sitk.BSplineTransform | None]  # "T1", "T1C": B-spline part of M (or none)


def _slab_z(ref: sitk.Image) -> tuple[float, float]:
    """z range (mm) [z0, z1] of the slab imaged by the grid ``ref``, from edge to edge of its slices."""
    z0 = ref.GetOrigin()[2] - ref.GetSpacing()[2] / 2
    z1 = z0 + ref.GetSpacing()[2] * ref.GetSize()[2]
    return z0, z1


def _sample_motion(
    rng: np.random.Generator, cfg: SynthConfig, ref: sitk.Image, centre_mm, motion: bool
) -> tuple[dict[str, sitk.Euler3DTransform], dict[str, sitk.BSplineTransform | None]]:
    """Motion M of T1 and T1C relative to T2: (rigid parts about ``centre_mm``, B-spline parts).

    Both rigid parts are drawn first, then (if ``cfg.max_nonrigid_mm`` > 0) both B-splines, so the
    rigid draws do not depend on the non-rigid setting. ``motion=False`` draws the same and then
    replaces M by the identity.
    """
    rigid = {
        m: motion_mod.random_rigid(rng, centre_mm, cfg.max_rotation_deg, cfg.max_translation_mm) for m in ("T1", "T1C")
    }
    nonrigid: dict[str, sitk.BSplineTransform | None] = {m: None for m in rigid}
    if float(cfg.max_nonrigid_mm) > 0:
        nonrigid = {
            m: motion_mod.random_bspline(rng, ref, cfg.max_nonrigid_mm, cfg.nonrigid_grid_spacing_mm) for m in rigid
        }
    if not motion:
        rigid = {m: motion_mod.identity_rigid(centre_mm) for m in rigid}
        nonrigid = {m: None for m in rigid}
    return rigid, nonrigid


def _sample_patient(streams: _Streams, cfg: SynthConfig, atlas: Atlas, ref: sitk.Image, motion: bool) -> _Patient:
    """Draw one patient's anatomy (deformation, tissues, lesions and vessels within the slab
    imaged by ``ref``, texture) and motion, each from its own stream."""
    deformation, deform_info = random_deformation(streams.anatomy, atlas)
    brain = PatientBrain.from_deformation(atlas, deformation)
    z0, z1 = _slab_z(ref)
    tissues = sample_patient_tissues(streams.tissues)
    lesions = sample_lesions(streams.lesions, brain, z0, z1)
    tubes, vessel_info = sample_vessels(streams.vessels, brain, z0, z1)
    texture = SmoothNoise(streams.texture, 16, (3.0, 12.0))
    rigid, nonrigid = _sample_motion(streams.motion, cfg, ref, atlas.centre_mm, motion)
    return _Patient(deformation, deform_info, tissues, lesions, tubes, vessel_info, texture, rigid, nonrigid)


def _scan_transform(
    deformation: sitk.Transform,
    rigid: sitk.Euler3DTransform | None,
    bspline: sitk.BSplineTransform | None,
    pts: np.ndarray,
    fine: sitk.Image,
) -> tuple[sitk.Transform, np.ndarray]:
    """(scan -> template transform, patient-space points q (N, 3) mm seen at the fine-grid points
    ``pts`` (N, 3) mm) for a scan moved by M = rigid o bspline (``rigid`` None: not moved)."""
    if rigid is None:
        return deformation, pts
    if bspline is None:
        tr = sitk.CompositeTransform([deformation, rigid.GetInverse()])
        return tr, motion_mod.apply_inverse(rigid, pts)
    # q = M^-1(y) at the fine-grid points y; SimpleITK samples the atlas through a
    # displacement field holding q - y at exactly those grid nodes.
    q = motion_mod.apply_inverse_nonrigid(rigid, bspline, pts)
    disp = sitk.GetImageFromArray((q - pts).reshape(tuple(fine.GetSize()[::-1]) + (3,)), isVector=True)
    disp.CopyInformation(fine)
    return sitk.CompositeTransform([deformation, sitk.DisplacementFieldTransform(disp)]), q


def _atlas_fractions(vec_img: sitk.Image, fine: sitk.Image, tr: sitk.Transform) -> np.ndarray:
    """Atlas channel fractions (N, C) float32 at the fine-grid points, sampled (linear) through ``tr``."""
    fr = sitk.GetArrayFromImage(sitk.Resample(vec_img, fine, tr, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32))
    return fr.reshape(-1, len(CHANNELS))


def _clean_scan(
    seq: Sequence, patient: _Patient, frac: dict[str, np.ndarray], fields: dict[str, np.ndarray], q: np.ndarray,
    shape_zyx, nsub,
) -> np.ndarray:
    """Noise-free scan (z, y, x): the compartment signals at the sub-samples ``q`` (N, 3) mm,
    times the tissue texture, averaged over each voxel's sub-samples (slice profile)."""
    s = _signal(seq, patient.tissues, frac, fields)
    s *= 1.0 + TEXTURE_AMPLITUDE * patient.texture(q)
    return _block_mean(s, shape_zyx, nsub)


def _voxel_fractions(frac: dict[str, np.ndarray], shape_zyx, nsub) -> np.ndarray:
    """Per-voxel mean compartment fractions (K, z, y, x), K in COMPARTMENTS order."""
    return np.stack([_block_mean(frac[k], shape_zyx, nsub) for k in COMPARTMENTS], 0)


def _tumour_mask(avg: np.ndarray) -> np.ndarray:
    """Tumour mask (z, y, x) uint8 from the voxel fractions ``avg`` (K, z, y, x): gross tumour
    (enhancing + non-enhancing tumour + necrosis) >= 0.5."""
    gross = sum(avg[COMPARTMENTS.index(k)] for k in TUMOUR_COMPARTMENTS)
    return (gross >= 0.5).astype(np.uint8)


def _label_map(avg: np.ndarray) -> np.ndarray:
    """Dominant-compartment label (z, y, x) uint8 (0 = air, then LABELS order) from ``avg`` (K, z, y, x)."""
    air = np.clip(1.0 - avg.sum(0), 0.0, 1.0)[None]
    return np.argmax(np.concatenate([air, avg], 0), axis=0).astype(np.uint8)


def _on_grid(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    """The (z, y, x) array as an image with the geometry of ``ref``."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


class Acquired(NamedTuple):
    """One scan as the scanner writes it, and the same scan without noise."""

    image: sitk.Image  # int16 0-4095 on the grid: bias x Rician noise x gain, 12-bit rounded
    clean: sitk.Image  # int16 0-4095: the same bias, gain and rounding, no noise
    info: dict[str, Any]  # the scan's cohort.json scanner entry


def _acquire(
    rng: np.random.Generator, clean: np.ndarray, seq: Sequence, tissues: PatientTissues, snr: float, ref: sitk.Image
) -> Acquired:
    """Scanner: receive bias, Rician noise (``snr`` relative to white matter), 12-bit gain.

    ``clean`` is the noise-free scan (z, y, x). Returns the noisy and the noise-free image (int16
    0-4095 on ``ref``) and the cohort.json scanner entry. Draws bias, noise, then gain from ``rng``
    (the noise-free image draws nothing: the stream is the same with or without it).
    """
    bias = bias_field(rng, clean.shape, BIAS_AMPLITUDE)
    clean = clean * bias
    wm = tissues["wm"]
    s_wm = float(seq.signal(wm.pd, *wm.relaxation(wm.gd_mM if seq.contrast else 0.0)))
    sigma = s_wm / snr
    noisy = rician(rng, clean, sigma)
    body = clean > 0.05 * clean.max()
    p995 = float(np.percentile(clean[body], 99.5)) if body.any() else float(clean.max() or 1.0)
    target = float(rng.uniform(0.78, 0.9)) * 4095.0
    gain = target / max(p995, 1e-12)
    img = _on_grid(to_uint12(noisy * gain), ref)
    noise_free = _on_grid(to_uint12(clean * gain), ref)
    info = {"gain": round(gain, 3), "snr_wm": snr, "noise_sigma": round(sigma * gain, 3), "sequence": seq.to_dict()}
    return Acquired(img, noise_free, info)


def _wm_mask(avg: np.ndarray, min_wm: float = WM_MIN_FRACTION, margin_px: int = WM_LESION_MARGIN_PX) -> np.ndarray:
    """Normal-appearing white matter (z, y, x) uint8 from the voxel fractions ``avg`` (K, z, y, x).

    Voxels with a white-matter fraction >= ``min_wm`` outside the lesion (any tumour, necrosis or
    oedema fraction above :data:`LESION_MIN_FRACTION`) dilated by a disc of ``margin_px`` voxels
    in-plane (slice by slice).
    """
    from scipy.ndimage import binary_dilation

    lesion = sum(avg[COMPARTMENTS.index(k)] for k in LESION_COMPARTMENTS) > LESION_MIN_FRACTION
    r = int(margin_px)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (yy**2 + xx**2 <= r * r)[None]
    near = binary_dilation(lesion, structure=disc) if r > 0 else lesion
    return ((avg[COMPARTMENTS.index("wm")] >= min_wm) & ~near).astype(np.uint8)


def _simulate_scans(
    cfg: SynthConfig, atlas: Atlas, ref: sitk.Image, patient: _Patient, rng: np.random.Generator, return_maps: bool
) -> tuple[dict[str, sitk.Image], dict[str, np.ndarray], dict[str, dict[str, Any]], np.ndarray]:
    """Acquire the scans in SCANS order on the grid ``ref``, the scanner draws from ``rng``.

    Returns (images by scan plus ``T1C_clean`` (the T1C without noise) and ``wm`` (normal-appearing
    white matter, uint8, T2 grid), label maps by scan (empty unless ``return_maps``), scanner
    entries by scan, tumour mask (z, y, x) uint8 from the T2 scan).
    """
    nsub = subsampling(cfg.spacing_mm)
    fine, pts = _fine_grid(ref, nsub)
    shape = ref.GetSize()[::-1]
    vec_img, _ = atlas_images(atlas)
    images: dict[str, sitk.Image] = {}
    maps: dict[str, np.ndarray] = {}
    scanner: dict[str, dict[str, Any]] = {}
    mask = None
    for scan in SCANS:
        seq = SEQUENCES[scan]
        tr, q = _scan_transform(patient.deformation, patient.rigid.get(scan), patient.nonrigid.get(scan), pts, fine)
        frac, fields = _compartments(_atlas_fractions(vec_img, fine, tr), q, patient.lesions, patient.tubes)
        clean = _clean_scan(seq, patient, frac, fields, q, shape, nsub)
        if return_maps or scan == "T2":
            avg = _voxel_fractions(frac, shape, nsub)
            if scan == "T2":
                mask = _tumour_mask(avg)
                images["wm"] = _on_grid(_wm_mask(avg), ref)
            if return_maps:
                maps[scan] = _label_map(avg)
        acq = _acquire(rng, clean, seq, patient.tissues, float(scan_snr(cfg, scan)), ref)
        images[scan], scanner[scan] = acq.image, acq.info
        if scan == "T1C":
            images["T1C_clean"] = acq.clean
    return images, maps, scanner, mask


def _patient_summary(
    pid: str, index: int, cfg: SynthConfig, patient: _Patient, mask: np.ndarray, scanner: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The patient's cohort.json entry: lesions, tumour mask (z, y, x) volume (ml) and slices,
    dose, deformation, vessels and scanner settings."""
    voxel_ml = float(np.prod(cfg.spacing_mm)) / 1000.0
    return {
        "pid": pid,
        "index": int(index),
        "n_lesions": len(patient.lesions),
        "lesions": [les.summary() for les in patient.lesions],
        "mask_volume_ml": round(float(mask.sum()) * voxel_ml, 3),
        "mask_slices": [int(k) for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1))],
        "dose_factor": patient.tissues.dose_factor,
        "deformation": patient.deform_info,
        "vessels": patient.vessel_info,
        "scanner": scanner,
    }


def synthesize_patient(
    pid: str,
    index: int,
    cfg: SynthConfig,
    seed: int,
    *,
    motion: bool = True,
    return_maps: bool = False,
    atlas: Atlas | None = None,
) -> PatientResult:
    """Simulate one patient. ``motion=False`` gives the same patient without inter-scan motion."""
    validate(cfg, seed)
    _check_index(index)
    atlas = atlas or load_atlas()
    streams = _patient_streams(seed, index)
    ref = t2_grid(cfg, atlas)
    patient = _sample_patient(streams, cfg, atlas, ref, motion)
    images, maps, scanner, mask = _simulate_scans(cfg, atlas, ref, patient, streams.scanner, return_maps)
    images["mask"] = _on_grid(mask, ref)
    summary = _patient_summary(pid, index, cfg, patient, mask, scanner)
    motion_json = {m: motion_mod.motion_entry(t, patient.nonrigid[m], m) for m, t in patient.rigid.items()}
    motion_tx = {m: motion_mod.composite(t, patient.nonrigid[m]) for m, t in patient.rigid.items()}
    return PatientResult(pid, images, motion_json, summary, maps if return_maps else None, motion_tx)


# ------------------------------------------------------------------------------------------------
# cohort


def _write_patient(root: Path, res: PatientResult) -> None:
    d = root / res.pid
    d.mkdir(parents=True, exist_ok=True)
    for key, fname in PATIENT_FILES.items():
        write_volume(res.images[key], d / fname)
    write_json(d / "motion.json", res.motion)
    for m, tx in (res.motion_transforms or {}).items():
        sitk.WriteTransform(tx, str(d / motion_mod.transform_file_name(m)))


def _montage_slices(res: PatientResult) -> dict[str, np.ndarray]:
    mask = sitk.GetArrayFromImage(res.images["mask"])
    k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(1)))
    out = {m: sitk.GetArrayFromImage(res.images[m])[k] for m in ("T1", "T2", "T1C")}
    out["mask"] = mask[k]
    out["slice"] = np.array(k)
    return out


def _run_one(root: str, index: int, cfg: SynthConfig, seed: int) -> tuple[dict, dict | None]:
    pid = patient_id(index)
    res = synthesize_patient(pid, index, cfg, seed)
    _write_patient(Path(root), res)
    logger.info(
        "synth %s: %d lesion(s), tumour mask %.1f ml", pid, res.summary["n_lesions"], res.summary["mask_volume_ml"]
    )
    return res.summary, (_montage_slices(res) if index < MONTAGE_ROWS else None)


def _init_worker(atlas: Atlas, threads: int) -> None:
    set_atlas(atlas)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def write_montage(path: str | Path, rows: list[tuple[str, dict[str, np.ndarray]]]) -> None:
    """rows of (pid, slices) -> PNG: columns T1, T2, T1C, T2 + tumour mask overlay."""
    from ..image_grid import Panel, image_grid

    def panel(sl: dict[str, np.ndarray], col: str) -> Panel:
        base = sl["T2"] if col == "mask" else sl[col]
        vmax = float(np.percentile(base, 99.5)) or 1.0
        return Panel(base, 0, vmax, interpolation="nearest", overlay=sl["mask"] if col == "mask" else None, overlay_alpha=0.45)

    cols = ("T1", "T2", "T1C", "mask")
    image_grid(
        [[panel(sl, col) for col in cols] for _, sl in rows], path,
        col_titles=["T2 + tumour mask" if col == "mask" else col for col in cols],
        row_labels=[f"{pid} z={int(sl['slice'])}" for pid, sl in rows], panel_size=2.4, dpi=80,
    )


def synthesize_cohort(out_dir: str | Path, cfg: SynthConfig, seed: int, workers: int = 1) -> list[str]:
    """Write out_dir/<pid>/{T1,T2,T1C,T1C_clean,tumor_mask,wm_mask}.nii.gz + motion.json for cfg.n_patients patients,
    plus out_dir/cohort.json and out_dir/montage.png. Returns the patient ids (P001, P002, ...).
    Written atomically (vce.io.atomic.atomic_dir on out_dir): complete or absent."""
    validate(cfg, seed, workers)
    atlas = load_atlas()
    n = int(cfg.n_patients)
    pids = [patient_id(i) for i in range(n)]
    workers = min(int(workers), n)
    logger.info("synthesizing %d patients (%s, seed %d, %d worker(s)) -> %s", n, cfg, seed, workers, out_dir)
    with atomic_dir(out_dir) as tmp:
        if workers == 1:
            results = [_run_one(str(tmp), i, cfg, seed) for i in range(n)]
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            # fork (POSIX): workers inherit the atlas and need not re-import the caller's __main__;
            # ITK re-creates its thread pool in a forked child.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(atlas, threads)) as ex:
                results = list(ex.map(_run_one, [str(tmp)] * n, range(n), [cfg] * n, [seed] * n))
        summaries = {r[0]["pid"]: r[0] for r in results}
        rows = [(patient_id(i), results[i][1]) for i in range(min(n, MONTAGE_ROWS))]
        ref = t2_grid(cfg, atlas)
        write_json(
            tmp / "cohort.json",
            {
                "generator": "vce.synth (physics-based: MNI152 2009 anatomy, 3 T relaxometry, gadobutrol)",
                "seed": int(seed),
                "config": dataclasses.asdict(cfg),
                "patients": pids,
                "files": dict(PATIENT_FILES, motion="motion.json"),
                "grid": {
                    "size_xyz": list(ref.GetSize()),
                    "spacing_mm": list(ref.GetSpacing()),
                    "origin_mm": list(ref.GetOrigin()),
                    "direction": list(ref.GetDirection()),
                    "subsamples_per_voxel_xyz": list(subsampling(cfg.spacing_mm)),
                },
                "sequences": {k: s.to_dict() for k, s in SEQUENCES.items()},
                "contrast_agent": {
                    "agent": "gadobutrol",
                    "r1_plasma_per_mM_s": R1_TISSUE * 1000,
                    "r2_plasma_per_mM_s": R2_TISSUE * 1000,
                    "r1_blood_per_mM_s": R1_BLOOD * 1000,
                    "r2_blood_per_mM_s": R2_BLOOD * 1000,
                    "plasma_mM": PLASMA_GD_MM,
                },
                "tissues": tissue_table(),
                "labels": list(LABELS),
                "summary": summaries,
            },
        )
        write_montage(tmp / "montage.png", rows)
    logger.info("cohort written: %s (%d patients)", out_dir, n)
    return pids
