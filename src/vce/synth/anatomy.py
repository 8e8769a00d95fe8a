"""Head anatomy: MNI152 2009 tissue maps plus an extra-cerebral shell, per-patient deformation,
normal enhancing vessels.

The template tissue-probability maps ship inside nilearn's wheel (no download). From them the
atlas holds, in template space (2 mm, LPS physical coordinates), the volume fraction of eleven
compartments: WM, GM, CSF, dura (meninges + falx), cortical bone, diploic marrow, muscle
(galea / temporalis), subcutaneous fat, skin, choroid plexus (in the lateral ventricles) and
sinus mucosa (lining the frontal sinus). Outside the brain the layers are built from the
distance to the (closed, smoothed) brain surface. Each patient's anatomy is the atlas pulled back
through a random smooth deformation (affine size/pose change composed with a cubic B-spline),
represented as a dense displacement field so that resampling stays fast.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

#: Atlas channels (volume fractions; their sum is 1 inside the head and 0 in air).
CHANNELS: tuple[str, ...] = (
    "wm", "gm", "csf", "dura", "bone", "marrow", "muscle", "fat", "skin", "choroid", "mucosa",
)

_PAD = 10  # template padding (voxels) so that the scalp fits and deformations stay inside
_SPACING = 2.0


@dataclass(frozen=True)
class Atlas:
    """Template-space tissue fractions, shape (z, y, x, C) in SimpleITK index order."""

    channels: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    centre_mm: tuple[float, float, float]  # brain-mask centroid (LPS)

    def vector_image(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.channels, isVector=True)
        img.SetOrigin(self.origin)
        img.SetSpacing(self.spacing)
        img.SetDirection(self.direction)
        return img

    def brain_image(self) -> sitk.Image:
        brain = self.channels[..., :3].sum(-1).astype(np.float32)
        img = sitk.GetImageFromArray(brain)
        img.SetOrigin(self.origin)
        img.SetSpacing(self.spacing)
        img.SetDirection(self.direction)
        return img

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical bounding box (min, max corners) of the atlas grid."""
        nz, ny, nx = self.channels.shape[:3]
        corners = []
        d = np.asarray(self.direction).reshape(3, 3)
        for i in (0, nx - 1):
            for j in (0, ny - 1):
                for k in (0, nz - 1):
                    corners.append(np.asarray(self.origin) + d @ (np.array([i, j, k]) * np.asarray(self.spacing)))
        c = np.array(corners)
        return c.min(0), c.max(0)


def _layer(d: np.ndarray, lo, hi, half: float = _SPACING / 2) -> np.ndarray:
    """Fraction of a voxel (footprint [d-half, d+half] along the surface normal) inside [lo, hi]."""
    return np.clip(np.minimum(hi, d + half) - np.maximum(lo, d - half), 0.0, 2 * half) / (2 * half)


def _zyx(img) -> np.ndarray:
    """A nibabel image's voxels as float32, transposed from (x, y, z) to (z, y, x)."""
    return np.transpose(np.asarray(img.get_fdata(), dtype=np.float32), (2, 1, 0))


def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 2 mm MNI152 2009 maps from nilearn (offline, they ship in its wheel).

    Returns (affine (4, 4) voxel -> RAS mm, brain mask bool, GM probability float32,
    WM probability float32), the maps shaped (z, y, x).
    """
    from nilearn import datasets  # heavy import: only here

    mask_img = datasets.load_mni152_brain_mask(resolution=2)
    gm_img = datasets.load_mni152_gm_template(resolution=2)
    wm_img = datasets.load_mni152_wm_template(resolution=2)
    aff = np.asarray(mask_img.affine, dtype=np.float64)
    if not np.allclose(aff[:3, :3], np.diag([_SPACING] * 3)):
        raise RuntimeError(f"unexpected MNI152 template affine {aff.tolist()}")
    return aff, _zyx(mask_img) > 0.5, _zyx(gm_img), _zyx(wm_img)


def _pad_template(a: np.ndarray) -> np.ndarray:
    """Pad a (z, y, x) template map by ``_PAD`` voxels on every side so that the scalp fits: the
    inferior side replicates the (cut) brainstem, everything else is air (zero)."""
    a = np.pad(a, ((_PAD, 0), (0, 0), (0, 0)), mode="edge")
    return np.pad(a, ((0, _PAD), (_PAD, _PAD), (_PAD, _PAD)), mode="constant")


def _brain_fractions(mask: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(GM, WM, CSF) volume fractions (z, y, x) float32 inside the brain ``mask``: the template
    probabilities clipped to [0, 1], GM + WM rescaled to at most 1, CSF the remainder."""
    gm = np.clip(gm, 0, 1) * mask
    wm = np.clip(wm, 0, 1) * mask
    s = gm + wm
    over = s > 1
    gm[over] /= s[over]
    wm[over] /= s[over]
    csf = mask * np.clip(1.0 - gm - wm, 0.0, 1.0)
    return gm, wm, csf


def _lps_frame(aff: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, ...]]:
    """(origin (mm), direction cosines) of the padded grid in ITK's LPS convention.

    RAS (nibabel) -> LPS (ITK): flip x and y. Voxel (i, j, k) of the padded grid is at
    RAS (aff_x + 2 (i - p), aff_y + 2 (j - p), aff_z + 2 (k - p)).
    """
    p = _PAD
    origin = (
        float(-(aff[0, 3] - p * _SPACING)),
        float(-(aff[1, 3] - p * _SPACING)),
        float(aff[2, 3] - p * _SPACING),
    )
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    return origin, direction


def _mni_axes(aff: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI (RAS, mm) coordinates (x, y, z) of the voxel centres of the padded (z, y, x) grid
    ``shape``, shaped (1, 1, nx), (1, ny, 1) and (nz, 1, 1) so that they broadcast to (z, y, x)."""
    nz, ny, nx = shape
    p = _PAD
    xr = (aff[0, 3] + _SPACING * (np.arange(nx) - p))[None, None, :]
    yr = (aff[1, 3] + _SPACING * (np.arange(ny) - p))[None, :, None]
    zr = (aff[2, 3] + _SPACING * (np.arange(nz) - p))[:, None, None]
    return xr, yr, zr


def _brain_envelope(mask: np.ndarray) -> np.ndarray:
    """Closed, hole-filled, smoothed brain envelope (z, y, x) bool containing ``mask``: the
    cisterns and fissures inside it are CSF."""
    ball = ndi.generate_binary_structure(3, 1)
    ball = ndi.iterate_structure(ball, 4)
    closed = ndi.binary_closing(np.pad(mask, 6), structure=ball)[6:-6, 6:-6, 6:-6]
    closed = ndi.binary_fill_holes(closed)
    return (ndi.gaussian_filter(closed.astype(np.float32), 1.5) > 0.5) | mask


def _falx(xr: np.ndarray, yr: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """Falx cerebri: the share (z, y, x) of the CSF that is midline dura within the
    interhemispheric fissure, above the corpus callosum (its free edge is at z ~ 35 mm over the
    callosum, y in [-45, 35] mm RAS; lower in front/behind). Arguments: MNI axes (mm)."""
    over_cc = np.clip((yr + 55.0) / 10.0, 0, 1) * np.clip((45.0 - yr) / 10.0, 0, 1)
    z_edge = -5.0 + 40.0 * over_cc
    return 0.6 * np.exp(-((xr / 1.2) ** 2)) * np.clip((zr - z_edge) / 4.0, 0, 1) * (yr > -100) * (yr < 60)


def _shell_distance(closed: np.ndarray) -> np.ndarray:
    """Distance (mm, float32, (z, y, x)) of the voxel centres outside the brain envelope
    ``closed`` from its surface; -2 mm (no shell fraction) inside it."""
    d = ndi.distance_transform_edt(~closed, sampling=_SPACING).astype(np.float32) - _SPACING / 2
    d[closed] = -_SPACING  # fully inside: no shell fraction
    return d


def _muscle_thickness(xr: np.ndarray, yr: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """Galea / temporalis thickness (mm, (z, y, x)): 1.5 mm, thick (up to 9.5 mm) laterally over
    the temporal fossa. Arguments: MNI axes (mm)."""
    lat = np.clip((np.abs(xr) - 40.0) / 25.0, 0, 1)
    vert = np.clip((55.0 - zr) / 25.0, 0, 1) * np.clip((zr + 45.0) / 20.0, 0, 1)
    ap = np.clip((yr + 80.0) / 20.0, 0, 1) * np.clip((40.0 - yr) / 20.0, 0, 1)
    return 1.5 + 8.0 * lat * vert * ap


def _frontal_sinus(xr: np.ndarray, yr: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """Frontal-sinus weight w_fs in [0, 1] (z, y, x) float32: an air cavity in the frontal bone
    in front of the frontal lobes, lined by mucosa. Arguments: MNI axes (mm)."""
    return (
        np.clip((18.0 - np.abs(xr)) / 4.0, 0, 1)
        * np.clip((zr + 8.0) / 5.0, 0, 1)
        * np.clip((26.0 - zr) / 6.0, 0, 1)
        * np.clip((yr - 45.0) / 8.0, 0, 1)
    ).astype(np.float32)


def _shell_layers(d: np.ndarray, w_fs: np.ndarray, muscle_t: np.ndarray) -> dict[str, np.ndarray]:
    """Extra-cerebral volume fractions (z, y, x) from the distance ``d`` (mm) to the brain
    envelope, outwards: csf | dura | inner table | diploe | outer table | muscle | fat | skin.

    Where the frontal-sinus weight ``w_fs`` > 0 the diploe widens by up to 8 mm into the cavity;
    ``muscle_t`` is the muscle thickness (mm). Keys: "csf", "dura" (to add to the brain's),
    "bone", "marrow", "muscle", "fat", "skin", "mucosa".
    """
    widen = 8.0 * w_fs
    b = [0.0, 1.0, 2.5, 4.0, 7.0, 8.5]  # csf | dura | inner table | diploe | outer table
    b4, b5 = b[4] + widen, b[5] + widen
    m_end = b5 + muscle_t
    f_end = m_end + 4.0
    s_end = f_end + 2.0
    diploe = _layer(d, b[3], b4)
    lining = _layer(d, b[3], b[3] + 1.5) + _layer(d, b4 - 1.5, b4)  # 1.5 mm mucosa on both walls
    return {
        "csf": _layer(d, b[0], b[1]),
        "dura": _layer(d, b[1], b[2]),
        "bone": _layer(d, b[2], b[3]) + (1.0 - w_fs) * 0.4 * diploe + _layer(d, b4, b5),
        "marrow": (1.0 - w_fs) * 0.6 * diploe,  # the rest of the sinus (w_fs * (diploe - lining)) is air
        "muscle": _layer(d, b5, m_end),
        "fat": _layer(d, m_end, f_end),
        "skin": _layer(d, f_end, s_end),
        "mucosa": w_fs * np.minimum(lining, diploe),
    }


def _choroid_plexus(mask: np.ndarray, csf: np.ndarray, xr: np.ndarray, yr: np.ndarray, zr: np.ndarray) -> np.ndarray:
    """Choroid plexus fraction (z, y, x) float32, to be taken from the CSF: vascular fronds in
    the lateral ventricles, bulky in the atria (glomus, MNI ~(+-26, -40, 12) mm) and thin along
    the ventricular bodies. Arguments: brain mask, CSF fraction, MNI axes (mm)."""
    depth_in = ndi.distance_transform_edt(mask, sampling=_SPACING).astype(np.float32)
    ventricle = (depth_in > 12.0) & (np.abs(xr) > 4.0) & (csf > 0.3)
    glomus = np.exp(-(((np.abs(xr) - 26.0) / 7.0) ** 2 + ((yr + 40.0) / 8.0) ** 2 + ((zr - 12.0) / 6.0) ** 2))
    along = np.clip((5.0 - yr) / 5.0, 0, 1) * np.clip((yr + 34.0) / 5.0, 0, 1)
    body = along * np.exp(-(((np.abs(xr) - 14.0) / 3.5) ** 2 + ((zr - 17.0) / 3.5) ** 2))
    return (0.7 * ventricle * np.maximum(glomus, body) * csf).astype(np.float32)


def _stack_channels(fractions: dict[str, np.ndarray]) -> np.ndarray:
    """Compartment fractions (z, y, x) keyed by channel -> (z, y, x, C) float32 in CHANNELS
    order, clipped to [0, 1] and rescaled where they sum past 1."""
    chans = np.stack([fractions[name] for name in CHANNELS], axis=-1).astype(np.float32)
    chans = np.clip(chans, 0.0, 1.0)
    tot = chans.sum(-1, keepdims=True)
    return np.where(tot > 1.0, chans / np.maximum(tot, 1e-6), chans).astype(np.float32)


def _mask_centre(mask: np.ndarray, origin: tuple[float, float, float]) -> tuple[float, float, float]:
    """Centroid (LPS mm, rounded to 0.1 mm) of the (z, y, x) brain ``mask`` on the padded grid
    whose LPS origin is ``origin``."""
    kc, jc, ic = np.argwhere(mask).mean(0)  # (z, y, x)
    centre = (
        float(origin[0] - _SPACING * ic),
        float(origin[1] - _SPACING * jc),
        float(origin[2] + _SPACING * kc),
    )
    return tuple(round(c, 1) for c in centre)


def build_atlas() -> Atlas:
    """Load the MNI152 2009 maps from nilearn (offline) and build the 11-compartment atlas."""
    aff, mask, gm, wm = _load_mni152()
    mask, gm, wm = _pad_template(mask), _pad_template(gm), _pad_template(wm)
    gm, wm, csf = _brain_fractions(mask, gm, wm)
    origin, direction = _lps_frame(aff)
    xr, yr, zr = _mni_axes(aff, mask.shape)

    closed = _brain_envelope(mask)
    csf = csf + (closed & ~mask).astype(np.float32)
    dura = (csf * _falx(xr, yr, zr)).astype(np.float32)
    csf = csf - dura

    # extra-cerebral layers by distance (mm) from the brain envelope
    shell = _shell_layers(_shell_distance(closed), _frontal_sinus(xr, yr, zr), _muscle_thickness(xr, yr, zr))
    csf = csf + shell["csf"]
    dura = dura + shell["dura"]
    choroid = _choroid_plexus(mask, csf, xr, yr, zr)
    csf = csf - choroid

    # the brain's own csf / dura replace the shell's increments of the same name
    fractions = {**shell, "wm": wm, "gm": gm, "csf": csf, "dura": dura, "choroid": choroid}
    chans = _stack_channels(fractions)
    centre = _mask_centre(mask, origin)
    return Atlas(np.ascontiguousarray(chans), origin, (_SPACING,) * 3, direction, centre)


_ATLAS: Atlas | None = None
_IMAGES: tuple[Atlas, sitk.Image, sitk.Image] | None = None


def load_atlas() -> Atlas:
    """The atlas, built once per process (a few seconds)."""
    global _ATLAS
    if _ATLAS is None:
        logger.info("building the MNI152 head atlas (nilearn templates, offline)")
        _ATLAS = build_atlas()
    return _ATLAS


def set_atlas(atlas: Atlas) -> None:
    """Install an atlas built elsewhere (process-pool workers receive the parent's)."""
    global _ATLAS
    _ATLAS = atlas


def atlas_images(atlas: Atlas) -> tuple[sitk.Image, sitk.Image]:
    """(vector image of all channels, scalar brain-fraction image), cached for the last atlas."""
    global _IMAGES
    if _IMAGES is None or _IMAGES[0] is not atlas:
        _IMAGES = (atlas, atlas.vector_image(), atlas.brain_image())
    return _IMAGES[1], _IMAGES[2]


# ------------------------------------------------------------------------------------------------
# smooth random fields


class SmoothNoise:
    """Band-limited random field: a sum of random plane waves, zero mean, unit variance."""

    def __init__(self, rng: np.random.Generator, n_waves: int = 12, wavelength_mm=(8.0, 30.0)):
        dirs = rng.normal(size=(n_waves, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(wavelength_mm[0], wavelength_mm[1], size=n_waves)
        self.k = (2 * np.pi / lam)[:, None] * dirs
        self.phase = rng.uniform(0, 2 * np.pi, size=n_waves)
        self.scale = math.sqrt(2.0 / n_waves)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        # single precision is ample (phase error ~1e-5 rad at 100 mm) and twice as fast
        p32 = np.asarray(pts, dtype=np.float32)
        k32 = self.k.astype(np.float32)
        ph = self.phase.astype(np.float32)
        out = np.zeros(len(pts), dtype=np.float32)
        px, py, pz = (np.ascontiguousarray(p32[:, i]) for i in range(3))
        for k, phi in zip(k32, ph):  # element-wise (no BLAS: deterministic, no thread oversubscription)
            out += np.cos(px * k[0] + py * k[1] + pz * k[2] + phi)
        return out.astype(np.float64) * self.scale


# ------------------------------------------------------------------------------------------------
# per-patient deformation


def _euler_matrix(angles) -> np.ndarray:
    t = sitk.Euler3DTransform()
    t.SetRotation(*[float(a) for a in angles])
    return np.asarray(t.GetMatrix()).reshape(3, 3)


def random_deformation(rng: np.random.Generator, atlas: Atlas) -> tuple[sitk.Transform, dict[str, object]]:
    """Patient -> template transform D (SimpleITK resampling convention) and its parameters.

    D = B o A: A scales the head about the brain centre (isotropic size factor uniform 0.9-1.1
    times per-axis log-normal 3 %), rotates it by up to 4 deg and shifts it by up to 3 mm
    (head pose); B is a cubic B-spline (4^3 mesh over the template) with N(0, 3 mm) coefficients,
    zero on the outer control points. D is sampled into a dense 4 mm displacement field.
    """
    c = np.asarray(atlas.centre_mm)
    size = float(rng.uniform(0.9, 1.1))
    axes = size * np.exp(rng.normal(0.0, 0.03, 3))
    angles = rng.uniform(-1, 1, 3) * math.radians(4.0)
    shift = rng.uniform(-1, 1, 3) * 3.0
    aff = sitk.AffineTransform(3)
    aff.SetCenter(c.tolist())
    aff.SetMatrix((_euler_matrix(angles) @ np.diag(1.0 / axes)).ravel().tolist())
    aff.SetTranslation(shift.tolist())

    lo, hi = atlas.bounds_mm()
    dom = sitk.Image([int(math.ceil((h - l) / 8.0)) + 1 for l, h in zip(lo, hi)], sitk.sitkUInt8)
    dom.SetOrigin(lo.tolist())
    dom.SetSpacing((8.0, 8.0, 8.0))
    bs = sitk.BSplineTransformInitializer(dom, [4, 4, 4], 3)
    n_ctrl = 4 + 3
    coef = rng.normal(0.0, 3.0, size=(3, n_ctrl, n_ctrl, n_ctrl))
    coef[:, [0, -1], :, :] = 0.0
    coef[:, :, [0, -1], :] = 0.0
    coef[:, :, :, [0, -1]] = 0.0
    bs.SetParameters(coef.ravel().tolist())

    # dense displacement field over the patient-space box (template box + margin)
    margin = 30.0
    spacing = 4.0
    plo, phi = lo - margin, hi + margin
    fsize = [int(math.ceil((h - l) / spacing)) + 1 for l, h in zip(plo, phi)]
    comp = sitk.CompositeTransform([bs, aff])
    fieldimg = sitk.TransformToDisplacementField(
        comp, sitk.sitkVectorFloat64, fsize, plo.tolist(), [spacing] * 3, [1, 0, 0, 0, 1, 0, 0, 0, 1]
    )
    disp = fieldimg
    info = {
        "head_scale": [round(float(a), 4) for a in axes],
        "pose_rotation_rad": [round(float(a), 5) for a in angles],
        "pose_shift_mm": [round(float(s), 3) for s in shift],
        "bspline_sd_mm": 3.0,
    }
    return sitk.DisplacementFieldTransform(disp), info


# ------------------------------------------------------------------------------------------------
# brain geometry in patient space (for placing lesions and vessels)


@dataclass
class PatientBrain:
    """Brain fraction and depth below the brain surface (mm) on a coarse patient-space grid."""

    origin: np.ndarray
    spacing: float
    brain: np.ndarray  # (z, y, x)
    depth: np.ndarray  # (z, y, x) mm, 0 outside the brain
    centre_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @classmethod
    def from_deformation(cls, atlas: Atlas, deformation: sitk.Transform, spacing: float = 3.0) -> "PatientBrain":
        _, brain_img = atlas_images(atlas)
        lo, hi = atlas.bounds_mm()
        shrink = _PAD * _SPACING - 15.0  # the template box (without padding) + 15 mm
        lo, hi = lo + shrink, hi - shrink
        size = [int(math.ceil((h - l) / spacing)) + 1 for l, h in zip(lo, hi)]
        ref = sitk.Image(size, sitk.sitkUInt8)
        ref.SetOrigin(lo.tolist())
        ref.SetSpacing([spacing] * 3)
        out = sitk.Resample(brain_img, ref, deformation, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        brain = sitk.GetArrayFromImage(out)
        inside = brain > 0.5
        depth = ndi.distance_transform_edt(inside, sampling=spacing).astype(np.float32)
        idx = np.argwhere(inside)
        centre = lo + spacing * idx.mean(0)[::-1] if len(idx) else (lo + hi) / 2
        return cls(np.asarray(lo, dtype=np.float64), spacing, brain, depth, np.asarray(centre))

    def _index(self, pts: np.ndarray) -> np.ndarray:
        return ((pts - self.origin) / self.spacing)[:, ::-1].T

    def depth_at(self, pts: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(self.depth, self._index(np.atleast_2d(pts)), order=1, cval=0.0)

    def brain_at(self, pts: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(self.brain, self._index(np.atleast_2d(pts)), order=1, cval=0.0)

    def candidates(self, min_depth: float, z_lo: float, z_hi: float) -> np.ndarray:
        """Physical points (N, 3) of grid nodes at least ``min_depth`` inside, with z in [z_lo, z_hi]."""
        idx = np.argwhere(self.depth >= min_depth)
        pts = self.origin + self.spacing * idx[:, ::-1]
        return pts[(pts[:, 2] >= z_lo) & (pts[:, 2] <= z_hi)]


# ------------------------------------------------------------------------------------------------
# vessels (normal enhancing structures)


@dataclass
class Tubes:
    """Blood vessels as densely sampled centre lines with a radius per sample."""

    points: np.ndarray  # (M, 3)
    radius: np.ndarray  # (M,)
    kind: np.ndarray  # (M,) 0 = artery, 1 = venous sinus
    edge_mm: float = 0.4
    _tree: cKDTree | None = None

    def fractions(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(artery, sinus) volume fractions at ``pts``."""
        art = np.zeros(len(pts), dtype=np.float32)
        sin = np.zeros(len(pts), dtype=np.float32)
        if len(self.points) == 0:
            return art, sin
        if self._tree is None:
            self._tree = cKDTree(self.points)
            self._build_occupancy()
        rmax = self._reach
        cell = np.floor((pts - self._occ_origin) / self._occ_cell).astype(np.int64)
        inb = np.all((cell >= 0) & (cell < np.array(self._occ.shape)), axis=1)
        sel = np.flatnonzero(inb)
        sel = sel[self._occ[cell[sel, 0], cell[sel, 1], cell[sel, 2]]]
        if len(sel) == 0:
            return art, sin
        d, i = self._tree.query(pts[sel], k=1, distance_upper_bound=rmax)
        ok = np.isfinite(d)
        sel, d, i = sel[ok], d[ok], i[ok]
        f = 1.0 / (1.0 + np.exp(-(self.radius[i] - d) / self.edge_mm))
        is_sinus = self.kind[i] == 1
        art[sel[~is_sinus]] = f[~is_sinus]
        sin[sel[is_sinus]] = f[is_sinus]
        return art, sin

    def _build_occupancy(self, cell: float = 4.0) -> None:
        """Coarse boolean grid of the cells within reach of a centre line (fast pre-selection)."""
        self._reach = float(self.radius.max()) + 4 * self.edge_mm + 1.0
        self._occ_cell = cell
        self._occ_origin = self.points.min(0) - self._reach - cell
        shape = np.ceil((self.points.max(0) + self._reach + cell - self._occ_origin) / cell).astype(int) + 1
        occ = np.zeros(shape, dtype=bool)
        idx = np.floor((self.points - self._occ_origin) / cell).astype(int)
        occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
        grow = int(np.ceil(self._reach / cell))
        self._occ = ndi.binary_dilation(occ, structure=np.ones((3, 3, 3), bool), iterations=grow)


def _smooth_path(rng: np.random.Generator, start, length_mm, step=0.5) -> np.ndarray:
    theta0 = rng.uniform(0, 2 * np.pi)
    elev0 = rng.normal(0.0, 0.2)
    s = np.arange(0.0, length_mm, step)
    theta = np.full_like(s, theta0)
    elev = np.full_like(s, elev0)
    for _ in range(3):
        a, lam, ph = rng.uniform(0.2, 0.6), rng.uniform(15, 50), rng.uniform(0, 2 * np.pi)
        theta += a * (np.sin(2 * np.pi * s / lam + ph) - np.sin(ph))
        a2, lam2, ph2 = rng.uniform(0.05, 0.2), rng.uniform(20, 60), rng.uniform(0, 2 * np.pi)
        elev += a2 * (np.sin(2 * np.pi * s / lam2 + ph2) - np.sin(ph2))
    d = np.stack([np.cos(elev) * np.cos(theta), np.cos(elev) * np.sin(theta), np.sin(elev)], 1)
    return np.asarray(start) + np.cumsum(d * step, axis=0) - d[0] * step


def sample_vessels(rng: np.random.Generator, brain: PatientBrain, z_lo: float, z_hi: float) -> tuple[Tubes, dict]:
    """A few smooth arteries inside the brain plus the superior sagittal sinus."""
    pts, rad, kind = [], [], []
    n = int(rng.integers(3, 7))
    cand = brain.candidates(12.0, z_lo, z_hi)
    if len(cand) == 0:
        cand = brain.candidates(6.0, -1e9, 1e9)
    lengths = []
    for _ in range(n):
        start = cand[int(rng.integers(len(cand)))] + rng.uniform(-1.5, 1.5, 3)
        length = float(rng.uniform(40.0, 110.0))
        r0 = float(rng.uniform(0.7, 1.5))
        path = _smooth_path(rng, start, length)
        inside = brain.depth_at(path) > 0.5
        stop = np.flatnonzero(~inside)
        if len(stop):
            path = path[: max(int(stop[0]), 2)]
        r = r0 * (1.0 - 0.4 * np.arange(len(path)) / max(len(path), 1))
        pts.append(path)
        rad.append(r)
        kind.append(np.zeros(len(path), dtype=np.int8))
        lengths.append(round(0.5 * len(path), 1))
    # superior sagittal sinus: follows the convexity in the mid-sagittal plane, just outside the brain
    c = brain.centre_mm
    thetas = np.radians(np.linspace(-15.0, 195.0, 211))
    radii = np.arange(0.0, 130.0, 1.0)
    rb = []
    for th in thetas:
        ray = c + radii[:, None] * np.array([0.0, -np.cos(th), np.sin(th)])[None, :]  # LPS: anterior = -y
        inside = brain.brain_at(ray) > 0.5
        out = np.flatnonzero(~inside & (radii > 5))
        rb.append(radii[out[0]] - 0.5 if len(out) else radii[-1])
    rb = np.convolve(np.pad(np.asarray(rb), 4, mode="edge"), np.ones(9) / 9, mode="valid")
    sss_r = float(rng.uniform(2.5, 3.5))
    ring = c + (rb + 2.5)[:, None] * np.stack([np.zeros_like(thetas), -np.cos(thetas), np.sin(thetas)], 1)
    seg = np.linalg.norm(np.diff(ring, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, arc[-1], 0.5)
    ring = np.stack([np.interp(s, arc, ring[:, k]) for k in range(3)], 1)
    pts.append(ring)
    rad.append(np.full(len(ring), sss_r))
    kind.append(np.ones(len(ring), dtype=np.int8))
    tubes = Tubes(np.concatenate(pts), np.concatenate(rad), np.concatenate(kind))
    return tubes, {"n_arteries": n, "artery_lengths_mm": lengths, "sinus_radius_mm": round(sss_r, 2)}
