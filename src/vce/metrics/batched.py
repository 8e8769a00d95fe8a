"""Metrics over a patient's slices at once, optionally restricted to a region (mask).

Every function takes stacks of slices, ``(N, H, W)`` float arrays in **scanner units**, and
boolean masks of the same shape, and returns one value per slice: an ``(N,)`` float64 array,
NaN where a slice's region is empty. The work is vectorised over blocks of slices of about
:data:`BLOCK_PIXELS` pixels whose scratch buffers are reused from block to block, so that they
stay in the CPU cache (the values do not depend on the block size).

Without a mask, :func:`mae`, :func:`mse`, :func:`ssim` and :func:`texture` equal the per-slice
definitions of :mod:`vce.metrics.similarity` and :mod:`vce.metrics.texture` (eq. 4-10) to
rounding (about 1e-13). The masked definitions are in ``docs/metrics.md``, section "Regions,
batched metrics, enhancement".
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage, sparse

from vce.metrics.similarity import K1, K2, SSIM_WINDOW
from vce.metrics.texture import SCALE, TEXTURE_KEYS

#: Pixels per block of slices (cache blocking; the values do not depend on it). Measured on 449
#: slices of 192x192 (mae, mse, ssim, texture of pred and gt): 0.58 s in blocks of 2 slices,
#: 0.74 s in blocks of 8, 4.2 s for the whole stack at once (temporaries of 130 MB: page faults
#: and cache misses), against 1.8-3 s for the per-slice loop of the reference functions.
BLOCK_PIXELS = 2 * 192 * 192
#: Pixels cropped at each border of the SSIM map before averaging (skimage: ``(win - 1) // 2``).
SSIM_CROP = (SSIM_WINDOW - 1) // 2
#: In-plane 3x3 neighbourhood (the Sobel support), one slice thick.
_FULL_3X3 = np.ones((1, 3, 3), dtype=bool)


# --------------------------------------------------------------------------- validation


def _stack(a: ArrayLike, name: str, min_side: int = 1) -> np.ndarray:
    """``a`` as a finite float64 ``(N, H, W)`` array with ``H, W >= min_side``."""
    x = np.ascontiguousarray(a, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a stack of slices (N, H, W), got an array with shape {x.shape}")
    if x.shape[0] == 0 or min(x.shape[1:]) < min_side:
        raise ValueError(f"{name}: need N >= 1 slices of at least {min_side}x{min_side} pixels, got shape {x.shape}")
    # a finite sum implies finite elements (inf and NaN propagate); one pass instead of isfinite().all()
    if not np.isfinite(x.sum()) and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _pair(pred: ArrayLike, gt: ArrayLike, min_side: int = 1) -> tuple[np.ndarray, np.ndarray]:
    p, g = _stack(pred, "pred", min_side), _stack(gt, "gt", min_side)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape}")
    return p, g


def _mask(mask: ArrayLike | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    """``mask`` as a bool array of ``shape`` (None stays None). Integer/float 0/1 masks are accepted."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, expected {tuple(shape)} (the image stack's shape)")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {m.dtype} with other values")
        m = m.astype(bool)
    return m


def _block_slices(shape: tuple[int, ...]) -> int:
    """Slices per block for a stack of ``shape``: about :data:`BLOCK_PIXELS` pixels, at least 1."""
    return max(1, min(shape[0], BLOCK_PIXELS // (shape[1] * shape[2])))


def _blocks(shape: tuple[int, ...]) -> Iterator[slice]:
    """Consecutive blocks of :func:`_block_slices` slice indices covering the stack of ``shape``."""
    n, size = shape[0], _block_slices(shape)
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def region_mean(values: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """Mean of ``values`` ``(N, h, w)`` over ``region`` (same shape, bool; None = all pixels).

    Returns ``(N,)`` float64, NaN where a slice's region is empty. No validation (internal helper).
    """
    if region is None:
        return values.mean(axis=(1, 2))
    count = region.sum(axis=(1, 2))
    total = np.where(region, values, 0.0).sum(axis=(1, 2))
    out = np.full(values.shape[0], np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


# --------------------------------------------------------------------------- kernels


class _Workspace:
    """Flat float64 scratch buffers reused by every block of one call.

    Fresh temporaries of a few MiB cost a page fault per 4 KiB page on every block (on the
    project's VMs that was most of the time); reused buffers keep the kernels at memory speed.
    """

    def __init__(self, block: int, h: int, w: int) -> None:
        self.size = block * (h + 2) * (w + 2)  # the largest need: the edge-padded block
        self._bufs: dict[str, np.ndarray] = {}

    def __call__(self, name: str, n: int) -> np.ndarray:
        """The first ``n`` entries of the buffer ``name`` (allocated on first use)."""
        if name not in self._bufs:
            self._bufs[name] = np.empty(self.size)
        return self._bufs[name][:n]


def _grid(buf: np.ndarray, shape: tuple[int, int, int], rows: int, cols: int) -> np.ndarray:
    """View of the flat buffer ``buf`` as a stack of ``shape`` slices, cropped to ``rows x cols``."""
    return buf[: shape[0] * shape[1] * shape[2]].reshape(shape)[:, :rows, :cols]


def _shifted_sum(x: np.ndarray, w: int, step: int, out: np.ndarray, ws: _Workspace) -> np.ndarray:
    """``out[i] = sum(x[i + k * step] for k < w)`` for ``i < out.size`` (``x`` 1D, contiguous).

    Binary doubling: partial sums of widths 1, 2, 4, ... combined by the bits of ``w``; every
    operation runs on contiguous memory (4 additions per element for ``w = 7``).
    """
    parts = [(1, x)]
    while 2 * parts[-1][0] <= w:
        width, p = parts[-1]
        k = p.size - width * step
        parts.append((2 * width, np.add(p[:k], p[width * step :], out=ws(f"double{width}", k))))
    terms, offset = [], 0
    for width, p in reversed(parts):
        if offset + width <= w:
            terms.append(p[offset * step : offset * step + out.size])
            offset += width
    if len(terms) == 1:
        np.copyto(out, terms[0])
        return out
    np.add(terms[0], terms[1], out=out)
    for t in terms[2:]:
        out += t
    return out


def _box_sum(xf: np.ndarray, w: int, width: int, out: np.ndarray, ws: _Workspace) -> np.ndarray:
    """In-plane ``w x w`` window sums of a flattened C-order stack of slices ``width`` pixels wide.

    ``out[i]`` (``out.size = xf.size - (w - 1) * (width + 1)``) is the sum over the window whose
    top-left pixel is pixel ``i`` of the stack; entries whose window leaves the slice are
    garbage, never read (callers keep the top-left ``(H - w + 1) x (W - w + 1)`` of each slice).
    """
    rows = _shifted_sum(xf, w, 1, ws("rows", xf.size - (w - 1)), ws)
    return _shifted_sum(rows, w, width, out, ws)


def _ssim_block(p: np.ndarray, g: np.ndarray, data_range: float, ws: _Workspace) -> np.ndarray:
    """SSIM map of skimage's ``structural_similarity`` on its cropped region: ``(n, H-6, W-6)`` view.

    Same formula (7x7 uniform window, sample covariance), written with window *sums*
    ``S = 49 * mean``: A1, B1 scaled by ``49^2`` and A2, B2 by ``49^2 / cov_norm``, which leaves
    ``A1 A2 / (B1 B2)`` unchanged. The window of every pixel of the cropped region lies inside
    the slice, so skimage's border mode (reflect) never enters.
    """
    n, h, w = p.shape
    win, npix = SSIM_WINDOW, SSIM_WINDOW * SSIM_WINDOW
    c1 = (K1 * data_range * npix) ** 2
    c2 = (K2 * data_range * npix) ** 2 * (npix - 1) / npix
    pf, gf = p.reshape(-1), g.reshape(-1)
    m = p.size - (win - 1) * (w + 1)
    sq = np.multiply(pf, pf, out=ws("sq", p.size))
    sq += np.multiply(gf, gf, out=ws("xy", p.size))  # x^2 + y^2 enter only as their sum
    xy = np.multiply(pf, gf, out=ws("xy", p.size))
    sx, sy = _box_sum(pf, win, w, ws("sx", m), ws), _box_sum(gf, win, w, ws("sy", m), ws)
    sq, sxy = _box_sum(sq, win, w, ws("ssq", m), ws), _box_sum(xy, win, w, ws("sxy", m), ws)
    t = np.multiply(sx, sy, out=ws("t", m))
    sx *= sx
    sx += np.multiply(sy, sy, out=sy)  # Sx^2 + Sy^2
    sq *= npix
    sq -= sx
    sq += c2  # B2
    sx += c1  # B1
    t *= 2
    sxy *= 2 * npix
    sxy -= t
    sxy += c2  # A2
    t += c1  # A1
    t *= sxy
    sx *= sq
    out = ws("ssim", p.size)
    np.divide(t, sx, out=out[:m])
    return _grid(out, p.shape, h - win + 1, w - win + 1)


def _forward_flat(a: np.ndarray, ws: _Workspace) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Eq. 1 on a contiguous ``(n, H, W)`` block: flat buffers ``(dx, dy, sqrt(dx^2 + dy^2), k)``.

    Entry ``r * W + c`` of a buffer (per slice) belongs to pixel ``(r, c)``; entries ``>= k``
    are unset: read them through ``_grid(buf, a.shape, H - 1, W - 1)``.
    ``dx = I[r+1, c] - I[r, c]`` (down the rows), ``dy = I[r, c+1] - I[r, c]`` (along the columns).
    """
    af, w = a.reshape(-1), a.shape[2]
    k = af.size - w
    dx, dy, mag = ws("dx", af.size), ws("dy", af.size), ws("mag", af.size)
    np.subtract(af[w:], af[:k], out=dx[:k])
    np.subtract(af[1 : k + 1], af[:k], out=dy[:k])
    np.multiply(dx[:k], dx[:k], out=mag[:k])
    mag[:k] += np.multiply(dy[:k], dy[:k], out=ws("tmp", k))
    np.sqrt(mag[:k], out=mag[:k])
    return dx, dy, mag, k


def _pad_edge(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``a`` ``(n, H, W)`` padded by one replicated pixel on each in-plane side into the flat ``out``."""
    n, h, w = a.shape
    pp = out.reshape(n, h + 2, w + 2)
    pp[:, 1:-1, 1:-1] = a
    pp[:, 0, 1:-1] = a[:, 0]
    pp[:, -1, 1:-1] = a[:, -1]
    pp[:, :, 0] = pp[:, :, 1]
    pp[:, :, -1] = pp[:, :, -2]
    return out


def _sobel_flat(a: np.ndarray, ws: _Workspace) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int, int]]:
    """Sobel responses (eq. 9 kernels, border "nearest") of a ``(n, H, W)`` block as flat buffers.

    Computed on the edge-padded ``(n, H+2, W+2)`` block, separably: ``Gx`` = [1, 2, 1] down the
    rows of the central difference along the columns; ``Gy`` = (row above - row below) of the
    [1, 2, 1] smoothing along the columns. Returns ``(gx, gy, k, padded_shape)``: pixel ``(r, c)``
    is entry ``r * (W+2) + c`` of a padded slice (entries ``>= k`` unset): read through
    ``_grid(buf, padded_shape, H, W)``.
    """
    n, h, w = a.shape
    row, size = w + 2, n * (h + 2) * (w + 2)
    pf = _pad_edge(a, ws("pad", size))
    k = size - 2 - 2 * row  # entry i holds the response at padded entry i + row + 1
    d = np.subtract(pf[2:], pf[:-2], out=ws("d", size - 2))  # central difference along the columns
    gx, gy = ws("gx", size), ws("gy", size)
    np.add(d[:k], d[2 * row : 2 * row + k], out=gx[:k])
    gx[:k] += d[row : row + k]
    gx[:k] += d[row : row + k]
    sm = np.add(pf[:-2], pf[2:], out=d)  # [1, 2, 1] along the columns (reuses d)
    sm += pf[1:-1]
    sm += pf[1:-1]
    np.subtract(sm[:k], sm[2 * row : 2 * row + k], out=gy[:k])
    return gx, gy, k, (n, h + 2, row)


def _texture_block(a: np.ndarray, m: np.ndarray | None, ws: _Workspace) -> np.ndarray:
    """``(mu, mean |grad|, mean(|dx| + |dy|), mean Sobel magnitude, variance)`` of each slice: ``(5, n)``.

    Whole slices (``m`` None) as eq. 7-10, otherwise over the masked definition's regions.
    """
    n, h, w = a.shape
    mu = region_mean(a, m)
    dx, dy, mag, k = _forward_flat(a, ws)
    fr = None if m is None else forward_region(m)
    grad = region_mean(_grid(mag, a.shape, h - 1, w - 1), fr)
    np.abs(dx[:k], out=dx[:k])
    dx[:k] += np.abs(dy[:k], out=dy[:k])
    absvar = region_mean(_grid(dx, a.shape, h - 1, w - 1), fr)
    gx, gy, k, padded = _sobel_flat(a, ws)
    gx[:k] *= gx[:k]
    gx[:k] += np.multiply(gy[:k], gy[:k], out=gy[:k])
    np.sqrt(gx[:k], out=gx[:k])
    sr = None if m is None else ndimage.binary_erosion(m, _FULL_3X3, border_value=0)
    ten = region_mean(_grid(gx, padded, h, w), sr)
    c = np.subtract(a, mu[:, None, None], out=ws("c", a.size).reshape(a.shape))
    if m is None:
        var = np.einsum("ni,ni->n", c.reshape(n, -1), c.reshape(n, -1)) / (h * w)
    else:
        c *= c
        var = region_mean(c, m)
    return np.stack([mu, grad, absvar, ten, var])


# --------------------------------------------------------------------------- similarity


def _difference_means(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None, power: int) -> np.ndarray:
    """Mean of ``|pred - gt| ** power`` over the mask per slice (blocks, reused buffers)."""
    p, g = _pair(pred, gt)
    m = _mask(mask, p.shape)
    ws = _Workspace(_block_slices(p.shape), p.shape[1], p.shape[2])
    out = np.empty(p.shape[0])
    for b in _blocks(p.shape):
        d = np.subtract(p[b], g[b], out=ws("d", p[b].size).reshape(p[b].shape))
        d = np.abs(d, out=d) if power == 1 else np.multiply(d, d, out=d)
        out[b] = region_mean(d, None if m is None else m[b])
    return out


def mae(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Mean absolute error per slice (eq. 4) over the mask's pixels (all pixels if None).

    Args:
        pred, gt: ``(N, H, W)`` scanner units. mask: ``(N, H, W)`` bool or None.
    Returns: ``(N,)`` float64 in scanner units, NaN where the mask is empty.
    """
    return _difference_means(pred, gt, mask, 1)


def mse(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Mean squared error per slice (eq. 5) over the mask's pixels: ``(N,)`` in scanner units^2."""
    return _difference_means(pred, gt, mask, 2)


def crop_ssim(mask: np.ndarray) -> np.ndarray:
    """A ``(N, H, W)`` mask cropped like the SSIM map: ``mask[:, 3:-3, 3:-3]``."""
    c = SSIM_CROP
    return mask[:, c : mask.shape[1] - c, c : mask.shape[2] - c]


def _ssim_inputs(pred: ArrayLike, gt: ArrayLike, data_range: float) -> tuple[np.ndarray, np.ndarray, _Workspace]:
    p, g = _pair(pred, gt, SSIM_WINDOW)
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range}")
    return p, g, _Workspace(_block_slices(p.shape), p.shape[1], p.shape[2])


def ssim_map(pred: ArrayLike, gt: ArrayLike, data_range: float) -> np.ndarray:
    """Local SSIM (eq. 6, skimage's 7x7 uniform window, sample covariance) where skimage averages it.

    Args:
        pred, gt: ``(N, H, W)`` scanner units, ``H, W >= 7``. data_range: ``L`` (> 0).
    Returns: ``(N, H - 6, W - 6)`` float64: the map cropped by :data:`SSIM_CROP` pixels at each
    border; entry ``(i, j)`` belongs to pixel ``(i + 3, j + 3)`` of the slice.
    """
    p, g, ws = _ssim_inputs(pred, gt, data_range)
    out = np.empty((p.shape[0], p.shape[1] - 2 * SSIM_CROP, p.shape[2] - 2 * SSIM_CROP))
    for b in _blocks(p.shape):
        out[b] = _ssim_block(p[b], g[b], float(data_range), ws)
    return out


def ssim(pred: ArrayLike, gt: ArrayLike, data_range: float, mask: ArrayLike | None = None) -> np.ndarray:
    """Mean SSIM per slice: the mean of :func:`ssim_map` over skimage's cropped region, or over
    the mask's pixels inside that region.

    Args:
        pred, gt: ``(N, H, W)`` scanner units. data_range: ``L``. mask: ``(N, H, W)`` bool or None.
    Returns: ``(N,)`` float64; NaN where the mask has no pixel inside the cropped region.
    """
    p, g, ws = _ssim_inputs(pred, gt, data_range)
    m = _mask(mask, p.shape)
    out = np.empty(p.shape[0])
    for b in _blocks(p.shape):
        out[b] = region_mean(_ssim_block(p[b], g[b], float(data_range), ws), None if m is None else crop_ssim(m[b]))
    return out


# --------------------------------------------------------------------------- gradients


def forward_region(mask: np.ndarray) -> np.ndarray:
    """Pixels of the ``(H-1) x (W-1)`` region whose pixel and both forward neighbours are in ``mask``."""
    return mask[:, :-1, :-1] & mask[:, 1:, :-1] & mask[:, :-1, 1:]


def sobel_xy(img: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Responses ``(Gx, Gy)`` of every slice to the paper's Sobel kernels (eq. 9), ``(N, H, W)`` each.

    Equal (to rounding) to :func:`vce.metrics.texture.sobel_xy` of every slice (border "nearest").
    """
    a = _stack(img, "img", 2)
    gx, gy, _, padded = _sobel_flat(a, _Workspace(a.shape[0], a.shape[1], a.shape[2]))
    h, w = a.shape[1:]
    return _grid(gx, padded, h, w).copy(), _grid(gy, padded, h, w).copy()


def mean_in(img: ArrayLike, mask: ArrayLike | None) -> np.ndarray:
    """Mean level of ``img`` ``(N, H, W)`` over ``mask`` per slice: ``(N,)``, image units, NaN if empty."""
    a = _stack(img, "img")
    return region_mean(a, _mask(mask, a.shape))


def gradient_magnitude(img: ArrayLike, mask: ArrayLike | None) -> np.ndarray:
    """Mean forward-difference gradient magnitude ``sqrt(dx^2 + dy^2)`` per slice (image units/pixel).

    Averaged over the pixels of the ``(H-1) x (W-1)`` region whose pixel and both forward
    neighbours are in ``mask`` (:func:`forward_region`; all of it if None). ``(N,)``, NaN if none.
    """
    a = _stack(img, "img", 2)
    m = _mask(mask, a.shape)
    mag = _forward_flat(a, _Workspace(a.shape[0], a.shape[1], a.shape[2]))[2]
    grid = _grid(mag, a.shape, a.shape[1] - 1, a.shape[2] - 1)
    return region_mean(grid, None if m is None else forward_region(m))


# --------------------------------------------------------------------------- texture


def texture(img: ArrayLike, scale: float = SCALE, mask: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """Texture indices of eq. 7-10 per slice on ``img / scale``: keys tmsvpmi, tavpmi, tfpmi, vfpmi.

    Without a mask, equal to :func:`vce.metrics.texture.texture_metrics` of every slice. With a
    mask (e.g. the body): ``mu`` = mean of ``img / scale`` over the mask; the forward differences
    count where the pixel and both forward neighbours are in the mask; the Sobel magnitude is
    averaged over mask pixels whose whole 3x3 neighbourhood is in the mask (pixels on the image
    border never are); VFPMI = mean((I - mu)^2) over the mask / mu.

    Args:
        img: ``(N, H, W)`` scanner units, ``H, W >= 2``. scale: intensity unit (> 0).
        mask: ``(N, H, W)`` bool or None.
    Returns: ``{key: (N,) float64}``, NaN where a region is empty or ``mu <= 0`` (where the
    per-slice function raises).
    """
    a = _stack(img, "img", 2)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    m = _mask(mask, a.shape)
    ws = _Workspace(_block_slices(a.shape), a.shape[1], a.shape[2])
    parts = np.empty((5, a.shape[0]))
    for b in _blocks(a.shape):
        parts[:, b] = _texture_block(a[b], None if m is None else m[b], ws)
    mu, grad, absvar, ten, var = parts
    # computed in scanner units: the first three indices are unit-free, VFPMI scales with 1/scale
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(mu > 0, mu, np.nan)
        values = (grad / mu, absvar / mu, ten / mu, var / (mu * float(scale)))
    return dict(zip(TEXTURE_KEYS, values))


# --------------------------------------------------------------------------- direction, spectrum


def masked_quantile(values: np.ndarray, mask: np.ndarray, q: float) -> np.ndarray:
    """Per slice ``q``-quantile (numpy's default, linear interpolation) of ``values`` over ``mask``.

    ``values``, ``mask``: ``(N, H, W)``; returns ``(N,)``, NaN where the mask is empty.
    """
    n = values.shape[0]
    flat = np.where(mask, values, np.inf).reshape(n, -1)
    flat.sort(axis=1)  # the k mask values of each slice come first
    k = mask.reshape(n, -1).sum(axis=1)
    h = np.maximum(k - 1, 0) * float(q)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
    v_lo = np.take_along_axis(flat, lo[:, None], axis=1)[:, 0]
    v_hi = np.take_along_axis(flat, hi[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore"):  # inf - inf on empty masks, replaced by NaN below
        out = v_lo + (h - lo) * (v_hi - v_lo)
    return np.where(k > 0, out, np.nan)


def direction_agreement(pred: ArrayLike, ref: ArrayLike, mask: ArrayLike, quantile: float = 0.9) -> np.ndarray:
    """How well the edges of ``pred`` point the way the edges of ``ref`` do, per slice.

    Mean of ``cos^2`` of the angle between the Sobel gradient vectors (eq. 9 kernels) of
    ``pred`` and ``ref`` over the reference's edges: mask pixels where ``|grad ref|`` is at
    least the ``quantile`` of ``|grad ref|`` over that slice's mask pixels, and > 0. ``cos^2``
    is sign-free: 1 = same (or opposite) direction, 0.5 = random, 0 = perpendicular; a
    ``pred`` with zero gradient there counts 0.

    Args:
        pred, ref: ``(N, H, W)`` (any common unit). mask: ``(N, H, W)`` bool. quantile: in [0, 1].
    Returns: ``(N,)`` float64 in [0, 1], NaN where a slice has no edge pixel.
    """
    p, r = _stack(pred, "pred", 2), _stack(ref, "ref", 2)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref differ in shape: {p.shape} vs {r.shape}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    m = _mask(mask, p.shape)
    if m is None:
        raise ValueError("direction_agreement needs a mask (e.g. the body)")
    px, py = sobel_xy(p)
    rx, ry = sobel_xy(r)
    rmag = np.sqrt(rx * rx + ry * ry)
    thr = masked_quantile(rmag, m, quantile)
    with np.errstate(invalid="ignore"):  # NaN thresholds (empty masks) select nothing
        edges = m & (rmag >= thr[:, None, None]) & (rmag > 0)
    dot = px * rx + py * ry
    pmag2 = px * px + py * py
    with np.errstate(divide="ignore", invalid="ignore"):
        cos2 = np.where(edges & (pmag2 > 0), dot * dot / (pmag2 * rmag * rmag), 0.0)
    return region_mean(cos2, edges)


def _radial_bins(h: int, w: int) -> tuple[np.ndarray, sparse.csr_matrix]:
    """Bin frequencies ``k * df`` (``df = 1 / min(h, w)``, ``k = 0 .. floor(min(h, w) / 2)``) and the
    ``(h * w, F)`` 0/1 matrix sending each FFT coefficient to the bin ``round(|f| / df)``."""
    side = min(h, w)
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]).ravel()
    k = np.rint(radius * side).astype(np.int64)
    n_bins = side // 2 + 1
    keep = np.flatnonzero(k < n_bins)  # the corners beyond 0.5 cycles/pixel are dropped
    onehot = sparse.csr_matrix((np.ones(keep.size), (keep, k[keep])), shape=(h * w, n_bins))
    return np.arange(n_bins) / side, onehot


def radial_psd(img: ArrayLike, mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged 2D power spectrum of every slice.

    Each slice minus its mean (with a mask: minus the mean over the mask, and 0 outside it),
    **no window**, ``P = |FFT2|^2 / (H * W)`` (so the mean of ``P`` over all 2D frequencies is
    the mean square of the centred slice), averaged over rings: the coefficient of frequency
    ``f = (fy, fx)`` (cycles/pixel, ``numpy.fft.fftfreq``) goes to bin ``round(|f| / df)``,
    ``df = 1 / min(H, W)``, up to 0.5 cycles/pixel (coefficients beyond are dropped).

    Args:
        img: ``(N, H, W)`` in any unit. mask: ``(N, H, W)`` bool or None.
    Returns: ``freq`` ``(F,)`` = ``k * df`` cycles/pixel, ``F = min(H, W) // 2 + 1``, and ``psd``
    ``(N, F)`` in unit^2 (NaN rows where the mask is empty).
    """
    a = _stack(img, "img", 2)
    m = _mask(mask, a.shape)
    mean = region_mean(a, m)
    c = a - mean[:, None, None]
    if m is not None:
        c[~m] = 0.0
    n, h, w = a.shape
    spec = np.fft.fft2(np.nan_to_num(c), axes=(1, 2))
    power = (spec.real**2 + spec.imag**2).reshape(n, h * w) / (h * w)
    freq, onehot = _radial_bins(h, w)
    sums = np.asarray((onehot.T @ power.T).T)
    psd = sums / np.asarray(onehot.sum(axis=0)).ravel()
    psd[np.isnan(mean)] = np.nan
    return freq, psd
