"""MR signal equations of the paper's three sequences and the scanner model.

* spin echo (T1-w TR 620 / TE 9.8 ms; T2-w TR 2500 / TE 74 ms):
  ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``
* 3D spoiled gradient echo (T1C, TR 3.42 / TE 1.11 ms, flip 12 deg), steady state (Ernst):
  ``S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*)``, ``E1 = exp(-TR/T1)``, T2* ~ T2.
* scanner: smooth multiplicative receive-bias field, complex Gaussian noise -> Rician magnitude,
  per-scan gain into the 12-bit range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sequence:
    name: str
    kind: str  # "SE" | "SPGR"
    tr_ms: float
    te_ms: float
    flip_deg: float = 90.0
    contrast: bool = False  # acquired after gadolinium

    def signal(self, pd, t1, t2):
        """Noise-free magnitude for proton density ``pd`` and relaxation times ``t1``, ``t2`` (ms)."""
        pd, t1, t2 = (np.asarray(a, dtype=np.float64) for a in (pd, t1, t2))
        if self.kind == "SE":
            return pd * (1.0 - np.exp(-self.tr_ms / t1)) * np.exp(-self.te_ms / t2)
        if self.kind == "SPGR":
            a = math.radians(self.flip_deg)
            e1 = np.exp(-self.tr_ms / t1)
            return pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * np.exp(-self.te_ms / t2)
        raise ValueError(f"unknown sequence kind {self.kind!r}")

    def to_dict(self) -> dict[str, object]:
        d = {"kind": self.kind, "tr_ms": self.tr_ms, "te_ms": self.te_ms, "contrast": self.contrast}
        if self.kind == "SPGR":
            d["flip_deg"] = self.flip_deg
        return d


#: The paper's protocol (section 2.4, 3 T Siemens). The T1C flip angle is not given in the paper;
#: 12 deg is typical of post-contrast 3D spoiled GRE (VIBE) head-and-neck protocols.
SEQUENCES: dict[str, Sequence] = {
    "T1": Sequence("T1", "SE", 620.0, 9.8),
    "T2": Sequence("T2", "SE", 2500.0, 74.0),
    "T1C": Sequence("T1C", "SPGR", 3.42, 1.11, flip_deg=12.0, contrast=True),
}


def bias_field(rng: np.random.Generator, shape_zyx: tuple[int, int, int], amplitude: float = 0.08) -> np.ndarray:
    """Smooth multiplicative receive field ``exp(sum_k c_k P_k(u))`` over the field of view.

    ``P_k`` are the 9 polynomials of degree 1-2 in normalised scanner coordinates u in [-1, 1]^3,
    ``c_k ~ N(0, amplitude)``; the field is normalised to mean 1 (it is tied to the coil, so it is
    defined in scanner coordinates, not in the patient).
    """
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(
        *(np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in (nz, ny, nx)), indexing="ij"
    )
    z = z * 0.5  # the slab is thin: less variation through-plane
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    c = rng.normal(0.0, amplitude, size=len(terms))
    log_b = sum(ci * t for ci, t in zip(c, terms))
    b = np.exp(log_b - log_b.mean())
    return b.astype(np.float64)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    n1 = rng.normal(0.0, sigma, size=signal.shape)
    n2 = rng.normal(0.0, sigma, size=signal.shape)
    return np.sqrt((signal + n1) ** 2 + n2**2)
