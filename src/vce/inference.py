"""Volume in, synthetic T1C volume out: slicing, normalisation, batched generator, inverse.

Arrays are (z, y, x) in scanner units on the T2 grid; the generator sees (B, C, S, S)
normalised slices with channels in the order of ``variant.modalities`` (T1 before T2).
:func:`to_scanner` is the one place a prediction becomes scanner units (12-bit, zero in the air
outside the T2 body mask), for ``vce predict`` and for the evaluation's synthesisers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .io.errors import VCEInputError
from .io.nifti import to_uint12
from .prep.normalization import forward, inverse, patient_stats
from .prep.slicing import SliceGeometry, body_mask, from_square, kept_slices, to_square


@torch.no_grad()
def run_generator(generator: torch.nn.Module, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, C, S, S) float32 -> (N, S, S) float32, in batches, without gradients."""
    generator.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch_size], dtype=np.float32))
        out.append(generator(x)[:, 0].cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0,) + inputs.shape[2:], np.float32)


def input_statistics(
    volumes: dict[str, np.ndarray], image_size: int, min_body_fraction: float, max_fov_missing: float = 0.01
) -> dict[str, dict[str, float]]:
    """Per-modality (mu, sd) exactly as ``split`` + ``normalize`` compute them for a stored patient.

    ``volumes``: modality -> (z, y, x) array in scanner units on the T2 grid (``"T2"`` required).
    Over the body pixels of the slices of :func:`kept_slices` with the modalities given (a new
    patient has T1 and T2 only; ``max_fov_missing`` defaults to ``split.max_fov_missing``'s default).
    Raises :class:`VCEInputError` when no slice is left.
    """
    geom = SliceGeometry.for_shape(volumes["T2"].shape[1:], image_size)
    z, n_fov = kept_slices(volumes, min_body_fraction, max_fov_missing)
    if len(z) == 0:
        raise VCEInputError(
            f"no slice with T2 body content (>= {min_body_fraction:g} of the slice)"
            + (f" covered by the field of view of {', '.join(sorted(volumes))} ({n_fov} slice(s) zero-filled beyond "
               f"{max_fov_missing:g} of the body)" if n_fov else "")
        )
    body = to_square(body_mask(volumes["T2"])[z].astype(np.float32), geom, order=0) > 0.5
    stats = {}
    for m, vol in volumes.items():
        mu, sd = patient_stats(to_square(vol[z], geom), body)
        stats[m] = {"mu": mu, "sd": sd}
    return stats


def to_scanner(pred: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """The one way a prediction becomes the pipeline's output in scanner units (``vce predict``
    and ``vce evaluate`` alike): clipped to [0, 4095], rounded to 12 bits (float32), and exactly
    0 outside the T2 body mask (:func:`vce.prep.slicing.body_mask`, the mask the split uses).

    The mask's complement is air: the scanner measures no tissue there, and the generator's output
    there (a grey halo where both inputs are 0) is not signal. Inside the mask the prediction is
    unchanged. ``pred`` and ``t2``: (z, y, x) on the T2 grid.
    """
    if pred.shape != t2.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the T2 shape {t2.shape}")
    out = to_uint12(pred).astype(np.float32)
    out[~body_mask(t2)] = 0.0
    return out


def synthesize_t1c(
    generator: torch.nn.Module,
    variant: dict[str, Any],
    volumes: dict[str, np.ndarray],
    stats: dict[str, dict[str, float]],
    t1c_stats: tuple[float, float],
    image_size: int,
    batch_size: int = 16,
) -> np.ndarray:
    """Synthetic T1C (z, y, x) in scanner units (:func:`to_scanner`: 12-bit, 0 outside the T2 body
    mask), for every slice of the volume.

    ``volumes`` holds the registered inputs named in ``variant["modalities"]`` and ``"T2"`` (whose
    body mask is applied); ``stats`` their patient statistics; ``t1c_stats`` the (mu, sd) used to
    invert the normalisation.
    """
    method = variant["normalization"]
    mods = list(variant["modalities"])
    shape = volumes[mods[0]].shape
    geom = SliceGeometry.for_shape(shape[1:], image_size)
    x = np.stack(
        [forward(to_square(volumes[m], geom), stats[m]["mu"], stats[m]["sd"], method) for m in mods], axis=1
    )
    y = run_generator(generator, x, batch_size)
    pred = inverse(from_square(y, geom), t1c_stats[0], t1c_stats[1], method)
    return to_scanner(pred, volumes["T2"])
