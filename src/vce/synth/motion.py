"""Inter-scan motion of T1 and T1C relative to T2: rigid plus a small smooth non-rigid part.

Convention (also written to motion.json): the transform ``M`` of a modality maps a point of T2
physical space to the corresponding point of that modality's physical space, i.e. the SimpleITK
resampling convention with fixed = T2 and moving = the modality, so ``sitk.Resample(T1, T2, M)``
aligns T1 to T2. The anatomy seen at point ``y`` of the modality's grid therefore sits at
``M^-1(y)`` in patient (= T2) space.

``M = R o B``: ``M(p) = R(p + d(p))`` with ``R`` a centred Euler3D transform and ``d`` a cubic
B-spline displacement on a coarse control grid (``synth.nonrigid_grid_spacing_mm``), at most
``synth.max_nonrigid_mm`` long. It is saved per modality as ``<patient>/motion_<mod>.tfm``
(``sitk.WriteTransform`` of ``CompositeTransform([R, B])``; SimpleITK applies the last-added
transform first), referenced from ``motion.json`` (key ``file``), which also keeps ``R``'s
parameters. ``sitk.ReadTransform`` gives ``M`` back exactly.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

CONVENTION = (
    "maps a point in T2 physical space to the corresponding point in this modality's physical space "
    "(SimpleITK resampling convention: fixed=T2, moving=this modality)"
)


def random_rigid(
    rng: np.random.Generator, center_mm, max_rotation_deg: float, max_translation_mm: float
) -> sitk.Euler3DTransform:
    """Euler3D with rotations uniform in +-max_rotation_deg and translations uniform in +-max_translation_mm."""
    rot = rng.uniform(-1.0, 1.0, size=3) * math.radians(max_rotation_deg)
    trans = rng.uniform(-1.0, 1.0, size=3) * max_translation_mm
    t = sitk.Euler3DTransform()
    t.SetCenter([float(c) for c in center_mm])
    t.SetRotation(*[float(r) for r in rot])
    t.SetTranslation([float(v) for v in trans])
    return t


def identity_rigid(center_mm) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetCenter([float(c) for c in center_mm])
    return t


def rigid_to_dict(t: sitk.Euler3DTransform) -> dict[str, object]:
    return {
        "transform": "Euler3DTransform",
        "center_mm": [float(v) for v in t.GetCenter()],
        "rotation_rad": [float(t.GetAngleX()), float(t.GetAngleY()), float(t.GetAngleZ())],
        "translation_mm": [float(v) for v in t.GetTranslation()],
        "convention": CONVENTION,
    }


def rigid_from_dict(d: dict) -> sitk.Euler3DTransform:
    """Rebuild the transform saved by :func:`rigid_to_dict` (motion.json entry)."""
    if d.get("transform") != "Euler3DTransform":
        raise ValueError(f"expected an Euler3DTransform entry, got {d.get('transform')!r}")
    t = sitk.Euler3DTransform()
    t.SetCenter([float(v) for v in d["center_mm"]])
    t.SetRotation(*[float(v) for v in d["rotation_rad"]])
    t.SetTranslation([float(v) for v in d["translation_mm"]])
    return t


def matvec_points(pts: np.ndarray, a: np.ndarray, b=None) -> np.ndarray:
    """``pts @ a.T + b`` for (N, 3) points, element-wise (no BLAS threads, deterministic)."""
    out = np.empty((len(pts), 3), dtype=np.float64)
    for i in range(3):
        out[:, i] = pts[:, 0] * a[i, 0] + pts[:, 1] * a[i, 1] + pts[:, 2] * a[i, 2]
        if b is not None:
            out[:, i] += b[i]
    return out


def _affine(t: sitk.Euler3DTransform) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with t(x) = A x + b."""
    a = np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(t.GetCenter(), dtype=np.float64)
    tr = np.asarray(t.GetTranslation(), dtype=np.float64)
    return a, c + tr - a @ c


def apply(t: sitk.Euler3DTransform, points: np.ndarray) -> np.ndarray:
    """t(points) for an (N, 3) array of physical points (x, y, z)."""
    a, b = _affine(t)
    return matvec_points(points, a, b)


def apply_inverse(t: sitk.Euler3DTransform, points: np.ndarray) -> np.ndarray:
    """t^-1(points): the patient-space points seen at ``points`` of the moved scan."""
    a, b = _affine(t)
    return matvec_points(points, a.T, -(a.T @ b))  # a is orthonormal: a^-1 = a^T


# ------------------------------------------------------------------------------------------------
# non-rigid part: M = R o B, i.e. M(p) = R(p + d(p)) with d a cubic B-spline displacement in T2 space

#: Margin (mm) by which the B-spline domain extends beyond the T2 grid on every side, so that all
#: sampled points (including those moved by the rigid part) lie inside its valid region.
BSPLINE_MARGIN_MM = 30.0
#: Fixed-point iterations for M^-1 stop once no point moves by more than this (mm).
INVERSE_TOL_MM = 1e-4
INVERSE_MAX_ITER = 30


def random_bspline(
    rng: np.random.Generator, ref: sitk.Image, max_displacement_mm: float, grid_spacing_mm: float
) -> sitk.BSplineTransform:
    """Smooth random cubic B-spline displacement over ``ref``'s physical extent (+ margin).

    Control points are about ``grid_spacing_mm`` apart (coarse = smooth); coefficient vectors
    are i.i.d. normal, the outermost ring is zero (the field fades out towards the border of the
    domain), and the whole field is scaled so that the largest displacement over the voxel
    centres of ``ref`` is ``u * max_displacement_mm`` with ``u ~ U(0.5, 1)``.
    """
    size = np.asarray(ref.GetSize(), dtype=np.float64)
    spacing = np.asarray(ref.GetSpacing(), dtype=np.float64)
    extent = size * spacing + 2 * BSPLINE_MARGIN_MM
    dom = sitk.Image([int(v) for v in np.maximum(2, np.ceil(extent / spacing))], sitk.sitkUInt8)
    dom.SetSpacing(ref.GetSpacing())
    dom.SetDirection(ref.GetDirection())
    d = np.asarray(ref.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(ref.GetOrigin()) - d @ (np.full(3, BSPLINE_MARGIN_MM))
    dom.SetOrigin([float(v) for v in origin])
    mesh = [int(max(1, round(e / float(grid_spacing_mm)))) for e in extent]
    bs = sitk.BSplineTransformInitializer(dom, mesh, 3)
    grid = tuple(m + 3 for m in mesh)  # coefficient grid (x, y, z)
    coef = rng.standard_normal(size=(3,) + grid[::-1])  # (component, z, y, x)
    coef[:, [0, -1], :, :] = 0.0
    coef[:, :, [0, -1], :] = 0.0
    coef[:, :, :, [0, -1]] = 0.0
    amp = float(rng.uniform(0.5, 1.0)) * float(max_displacement_mm)
    bs.SetParameters([float(v) for v in coef.ravel()])  # x coefficients, then y, then z; x fastest
    peak = float(np.sqrt((bspline_displacement(bs, grid_points(ref)) ** 2).sum(1)).max())
    coef *= amp / peak if peak > 0 else 0.0
    bs.SetParameters([float(v) for v in coef.ravel()])
    return bs


def grid_points(ref: sitk.Image) -> np.ndarray:
    """(N, 3) physical points (x, y, z) of all voxel centres of ``ref`` (x fastest)."""
    size = ref.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1) * np.asarray(ref.GetSpacing())
    return matvec_points(idx, np.asarray(ref.GetDirection(), dtype=np.float64).reshape(3, 3), np.asarray(ref.GetOrigin()))


def bspline_displacement(bs: sitk.BSplineTransform, points: np.ndarray) -> np.ndarray:
    """d(points) = bs(points) - points for (N, 3) physical points, vectorised.

    Exact evaluation of ITK's cubic B-spline (tensor-product cubic B-spline of the coefficient
    images, via ``scipy.ndimage.map_coordinates(order=3, prefilter=False)``); points whose
    4x4x4 support leaves the coefficient grid get zero displacement, as in ITK.
    """
    from scipy.ndimage import map_coordinates

    coefs = bs.GetCoefficientImages()
    c0 = coefs[0]
    org = np.asarray(c0.GetOrigin(), dtype=np.float64)
    sp = np.asarray(c0.GetSpacing(), dtype=np.float64)
    dr = np.asarray(c0.GetDirection(), dtype=np.float64).reshape(3, 3)
    rel = points - org
    cidx = np.empty_like(rel)
    for i in range(3):  # (D^T (p - o)) / spacing, element-wise (deterministic, no BLAS)
        cidx[:, i] = (rel[:, 0] * dr[0, i] + rel[:, 1] * dr[1, i] + rel[:, 2] * dr[2, i]) / sp[i]
    size = np.asarray(c0.GetSize())
    start = np.floor(cidx) - 1
    valid = np.all((start >= 0) & (start + 3 < size), axis=1)
    coords = cidx[:, ::-1].T  # (z, y, x) rows for arrays indexed [z, y, x]
    out = np.zeros_like(points, dtype=np.float64)
    for k, img in enumerate(coefs):
        arr = sitk.GetArrayFromImage(img).astype(np.float64)
        out[:, k] = map_coordinates(arr, coords, order=3, prefilter=False, mode="nearest")
    out[~valid] = 0.0
    return out


def composite(rigid: sitk.Euler3DTransform, bspline: sitk.BSplineTransform | None) -> sitk.CompositeTransform:
    """M = rigid o bspline as a SimpleITK composite (its last-added transform is applied first)."""
    tx = sitk.CompositeTransform(3)
    tx.AddTransform(sitk.Euler3DTransform(rigid))
    if bspline is not None:
        tx.AddTransform(sitk.BSplineTransform(bspline))
    return tx


def apply_inverse_nonrigid(rigid: sitk.Euler3DTransform, bspline: sitk.BSplineTransform | None, points: np.ndarray) -> np.ndarray:
    """M^-1(points) for M(p) = rigid(p + d(p)): the patient-space points seen at ``points`` of the moved scan.

    u = rigid^-1(y), then the fixed-point iteration q <- u - d(q) (a contraction while the
    displacement's gradient is < 1, here ~ max_nonrigid_mm / grid spacing ~ 0.05), stopped at
    ``INVERSE_TOL_MM`` (deterministic: same operations every run).
    """
    u = apply_inverse(rigid, points)
    if bspline is None:
        return u
    q = u - bspline_displacement(bspline, u)
    for _ in range(INVERSE_MAX_ITER):
        q_new = u - bspline_displacement(bspline, q)
        step = float(np.abs(q_new - q).max()) if len(q) else 0.0
        q = q_new
        if step < INVERSE_TOL_MM:
            break
    return q


def transform_file_name(modality: str) -> str:
    """File (in the patient directory) holding the true T2->modality transform: ``motion_<mod>.tfm``."""
    return f"motion_{modality}.tfm"


def motion_entry(rigid: sitk.Euler3DTransform, bspline: sitk.BSplineTransform | None, modality: str) -> dict[str, object]:
    """motion.json entry: the rigid part's parameters, the B-spline summary and the transform file."""
    d = rigid_to_dict(rigid)
    d["file"] = transform_file_name(modality)
    d["file_transform"] = "CompositeTransform (Euler3DTransform o BSplineTransform)" if bspline is not None else "CompositeTransform (Euler3DTransform)"
    if bspline is not None:
        mesh = [int(s) - 3 for s in bspline.GetCoefficientImages()[0].GetSize()]
        coef = np.asarray(bspline.GetParameters(), dtype=np.float64).reshape(3, -1)
        d["nonrigid"] = {
            "transform": "BSplineTransform (order 3), applied before the rigid part: M(p) = R(p + d(p))",
            "mesh_size": mesh,
            "max_coefficient_mm": float(np.sqrt((coef**2).sum(0)).max()),
        }
    else:
        d["nonrigid"] = None
    return d


def read_true_transform(patient_dir, entry: dict) -> sitk.Transform:
    """The true T2->modality transform of a motion.json entry (file if referenced, else the rigid dict)."""
    from pathlib import Path

    if entry.get("file"):
        return sitk.ReadTransform(str(Path(patient_dir) / entry["file"]))
    return rigid_from_dict(entry)
