"""Brain tumours: irregular solid or ring-enhancing lesions with heterogeneous, tissue-following
enhancement, non-enhancing tumour, necrosis and vasogenic oedema.

A lesion is an implicit shape in patient space. For a point x, with q = diag(1/a) R^T (x - c)
(random orientation R, axis ratios a), the normalised radius is

    rho(x) = |q| / (R0 (1 + m(q/|q|))) + 0.07 n(x)

where m is a smooth function of direction (sum of random cosines, irregular lobulated outline)
and n a band-limited random field (ragged margin). Compartments (volume fractions, logistic
edges of ~0.6 mm so that partial volume is resolved at any voxel size):

* gross tumour:                rho < 1
* necrotic core:               rho < rho_c (1 + 0.15 n_c(x)); ring-enhancing lesions rho_c ~ U(0.3, 0.7),
  solid lesions (probability SOLID_PROBABILITY, and every small satellite) have no core (rho_c = 0)
* viable tumour = gross - core, split by its local leakiness
  ``l(x) = RHO_LEAK h(x) + sqrt(1 - RHO_LEAK^2) n_l(x)`` (``h`` a unit-variance band-limited field,
  the tissue's extracellular-water excess, ``n_l`` an independent one): a fraction
  ``sigmoid(4 (theta - l))`` (theta ~ U(-1.6, -0.6) per lesion) is non-enhancing tumour (intact
  barrier), the rest enhancing tumour.
* oedema extent:               rho < rho_o (1 + 0.15 n_o(x)),  rho_o ~ U(1.4, 2.4), 2 mm edge;
  oedema only replaces white matter (and half of the grey matter) -- it spreads along WM tracts.
* per-voxel tissue modulation of the viable tumour (``tissue_field``): T1 x (1 + 0.06 h),
  T2 x (1 + 0.12 h) (more extracellular water: longer relaxation), and the enhancing tumour's
  uptake ``u (1 + 0.35 l)`` clipped to [0.3, 2]: enhancement follows the tissue (its leakiness,
  partly visible before contrast through h), not only the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import PatientBrain, SmoothNoise, _euler_matrix
from .motion import matvec_points

#: Probability that an index lesion is solid (no necrotic core; e.g. metastases, lymphoma, NPC-like
#: solid enhancing tumours); the others are ring-enhancing with a necrotic core.
SOLID_PROBABILITY = 0.45
#: Correlation of the enhancing tumour's leakiness with the pre-contrast-visible tissue field h.
RHO_LEAK = 0.7
#: Relative T1 / T2 change of viable tumour per unit of h, and relative uptake change per unit leakiness.
T1_PER_H = 0.06
T2_PER_H = 0.12
UPTAKE_PER_LEAK = 0.35


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class Lesion:
    centre: np.ndarray
    radius_mm: float
    rotation: np.ndarray  # 3x3
    axes: np.ndarray  # 3 axis ratios (product 1)
    dir_k: np.ndarray  # (J, 3) unit vectors of the directional modulation
    dir_amp: np.ndarray  # (J,)
    dir_freq: np.ndarray
    dir_phase: np.ndarray
    margin: SmoothNoise
    core_noise: SmoothNoise
    oedema_noise: SmoothNoise
    uptake_noise: SmoothNoise
    rho_core: float
    rho_oedema: float
    uptake: float
    tissue_noise: SmoothNoise | None = None  # h: pre-contrast-visible tissue field of the viable tumour
    nonenh_threshold: float = -1e9  # theta: viable tumour with leakiness below it does not enhance
    solid: bool = False
    edge_mm: float = 0.6
    oedema_edge_mm: float = 2.0

    def gross_extent_mm(self) -> float:
        """Upper bound of the gross-tumour radius."""
        return self.radius_mm * float(self.axes.max()) * (1.0 + float(np.abs(self.dir_amp).sum())) * 1.15 + 1.0

    def extent_mm(self) -> float:
        """Upper bound of the oedema radius."""
        return self.gross_extent_mm() * self.rho_oedema * 1.2 + 4 * self.oedema_edge_mm

    def evaluate(self, pts: np.ndarray) -> dict[str, np.ndarray]:
        """At the (N, 3) ``pts``: fractions ``core`` (necrosis), ``enhancing`` and ``nonenhancing``
        (viable tumour), ``oedema_extent``; the enhancing tumour's ``uptake`` factor and the viable
        tumour's tissue field ``h``."""
        v = pts - self.centre
        q = matvec_points(v, self.rotation.T) / self.axes
        r = np.linalg.norm(q, axis=1)
        u = q / np.maximum(r, 1e-6)[:, None]
        m = np.zeros(len(pts))
        for k, a, f, ph in zip(self.dir_k, self.dir_amp, self.dir_freq, self.dir_phase):
            m += a * np.cos(np.pi * f * (u[:, 0] * k[0] + u[:, 1] * k[1] + u[:, 2] * k[2]) + ph)
        rho = r / (self.radius_mm * (1.0 + m)) + 0.07 * self.margin(pts)
        s = self.radius_mm / self.edge_mm
        gross = _sigmoid((1.0 - rho) * s)
        if self.rho_core > 0:
            core = np.minimum(_sigmoid((self.rho_core * (1.0 + 0.15 * self.core_noise(pts)) - rho) * s), gross)
        else:
            core = np.zeros(len(pts))
        ext = _sigmoid(
            (self.rho_oedema * (1.0 + 0.15 * self.oedema_noise(pts)) - rho) * self.radius_mm / self.oedema_edge_mm
        )
        h = self.tissue_noise(pts) if self.tissue_noise is not None else np.zeros(len(pts))
        leak = RHO_LEAK * h + np.sqrt(1.0 - RHO_LEAK**2) * self.uptake_noise(pts)
        nonenh = _sigmoid(4.0 * (self.nonenh_threshold - leak))
        viable = gross - core
        uptake = self.uptake * np.clip(1.0 + UPTAKE_PER_LEAK * leak, 0.3, 2.0)
        return {"core": core, "enhancing": viable * (1.0 - nonenh), "nonenhancing": viable * nonenh,
                "oedema_extent": np.maximum(ext, gross), "uptake": uptake, "h": h}

    def volumes_ml(self, step_mm: float = 1.0) -> dict[str, float]:
        """Gross-tumour and necrotic-core volumes (ml), integrated on a ``step_mm`` grid."""
        e = self.gross_extent_mm()
        ax = np.arange(-e, e + step_mm, step_mm)
        g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3) + self.centre
        out = {"gross": 0.0, "core": 0.0, "enhancing": 0.0}
        for chunk in np.array_split(g, max(1, len(g) // 200_000)):
            f = self.evaluate(chunk)
            out["gross"] += float((f["core"] + f["enhancing"] + f["nonenhancing"]).sum())
            out["core"] += float(f["core"].sum())
            out["enhancing"] += float(f["enhancing"].sum())
        return {k: round(v * step_mm**3 / 1000.0, 3) for k, v in out.items()}

    def summary(self) -> dict[str, object]:
        vol = self.volumes_ml()
        return {
            "centre_mm": [round(float(c), 2) for c in self.centre],
            "radius_mm": round(self.radius_mm, 2),
            "type": "solid" if self.solid else "ring",
            "gross_volume_ml": vol["gross"],
            "necrosis_volume_ml": vol["core"],
            "enhancing_volume_ml": vol["enhancing"],
            "necrotic_fraction_radius": round(self.rho_core, 3),
            "oedema_extent_radius": round(self.rho_oedema, 3),
            "uptake_factor": round(self.uptake, 3),
        }


def random_lesion_shape(rng: np.random.Generator, centre, radius_mm: float, solid: bool = False) -> Lesion:
    """Draw the shape and compartment parameters of one lesion (centre set later); ``solid``:
    no necrotic core."""
    axes = np.exp(rng.normal(0.0, 0.12, 3))
    axes /= np.prod(axes) ** (1 / 3)
    rotation = _euler_matrix(rng.uniform(-np.pi, np.pi, 3))
    j = 5
    dir_k = rng.normal(size=(j, 3))
    dir_k /= np.linalg.norm(dir_k, axis=1, keepdims=True)
    return Lesion(
        centre=np.asarray(centre, dtype=np.float64),
        radius_mm=float(radius_mm),
        rotation=rotation,
        axes=axes,
        dir_k=dir_k,
        dir_amp=rng.uniform(0.0, 0.06, j),
        dir_freq=rng.uniform(0.5, 2.0, j),
        dir_phase=rng.uniform(0, 2 * np.pi, j),
        margin=SmoothNoise(rng, 10, (6.0, 20.0)),
        core_noise=SmoothNoise(rng, 8, (6.0, 20.0)),
        oedema_noise=SmoothNoise(rng, 8, (10.0, 40.0)),
        uptake_noise=SmoothNoise(rng, 10, (6.0, 20.0)),
        rho_core=0.0 if solid else float(rng.uniform(0.3, 0.7)),
        rho_oedema=float(rng.uniform(1.4, 2.4)),
        uptake=float(rng.uniform(0.7, 1.3)),
        tissue_noise=SmoothNoise(rng, 10, (5.0, 16.0)),
        nonenh_threshold=float(rng.uniform(-1.6, -0.6)),
        solid=solid,
    )


def sample_lesions(
    rng: np.random.Generator,
    brain: PatientBrain,
    z_lo: float,
    z_hi: float,
    radius_range=(8.0, 25.0),
    small_radius_range=(3.0, 8.0),
) -> list[Lesion]:
    """1-3 lesions fully inside the brain, centred within the imaged slab [z_lo, z_hi]; each is
    solid with probability :data:`SOLID_PROBABILITY` (small satellites always), else ring-enhancing.

    Number of lesions: 1, 2 or 3 with probabilities 0.55, 0.30, 0.15 (multifocal disease,
    metastases). The first (index) lesion has a gross radius ~ U(radius_range); each further one
    is small (U(small_radius_range): satellite / small metastasis) with probability 0.5,
    otherwise drawn like the first.
    """
    n = int(rng.choice([1, 2, 3], p=[0.55, 0.30, 0.15]))
    half = 0.5 * (z_hi - z_lo)
    zc = 0.5 * (z_hi + z_lo)
    lesions: list[Lesion] = []
    for k in range(n):
        small = k > 0 and rng.uniform() < 0.5
        radius = float(rng.uniform(*(small_radius_range if small else radius_range)))
        solid = small or rng.uniform() < SOLID_PROBABILITY
        les = random_lesion_shape(rng, np.zeros(3), radius, solid=solid)
        for _attempt in range(8):
            ext = les.gross_extent_mm()
            band = max(half - 0.5 * les.radius_mm, 0.3 * half)
            cand = brain.candidates(ext, zc - band, zc + band)
            for other in lesions:
                if len(cand):
                    far = np.linalg.norm(cand - other.centre, axis=1) > 1.05 * (ext + other.gross_extent_mm())
                    cand = cand[far]
            if len(cand):
                les.centre = cand[int(rng.integers(len(cand)))] + rng.uniform(-1.0, 1.0, 3)
                lesions.append(les)
                break
            les.radius_mm *= 0.85
        if not lesions:  # always at least one lesion: the deepest point of the slab, smallest size
            les.radius_mm = radius_range[0] * 0.8
            cand = brain.candidates(0.0, zc - half, zc + half)
            depth = brain.depth_at(cand)
            les.centre = cand[int(np.argmax(depth))]
            lesions.append(les)
    return lesions
