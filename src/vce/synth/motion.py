"""Rigid inter-scan motion of T1 and T1C relative to T2.

Convention (also written to motion.json): the Euler3D transform ``M`` of a modality maps a point
of T2 physical space to the corresponding point of that modality's physical space, i.e. the
SimpleITK resampling convention with fixed = T2 and moving = the modality, so
``sitk.Resample(T1, T2, M)`` aligns T1 to T2. The anatomy seen at point ``y`` of the modality's
grid therefore sits at ``M^-1(y)`` in patient (= T2) space.
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
