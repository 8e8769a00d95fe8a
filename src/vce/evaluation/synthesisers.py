"""What turns a test patient's registered inputs into a synthetic T1C: the models and the references.

Every synthesiser maps ``(case) -> {inversion: prediction}``: ``prediction`` is (z, y, x) on the
T2 grid in scanner units, clipped to [0, 4095] and rounded to 12 bits, for every slice of the
volume; ``inversion`` is a key of :data:`INVERSIONS`. The models (trained generators and the
learnability regressor) go through :func:`vce.inference.to_scanner`, the same function
``vce predict`` uses, so their predictions are exactly 0 outside the T2 body mask (the mask's
complement is air; whole-image scores such as ``mae`` include that air as 0). The oracle is the
truth through the resampling and keeps the truth's air.

* ``"gt"``: the paper's inversion, the normalisation undone with the ground truth's own T1C
  mean and sd (an oracle a new patient does not have);
* ``"cal"``: the deployable one, with the T1C mean and sd predicted from the patient's T1/T2
  statistics by the calibration fitted on the training patients (what ``vce predict`` does).

A prediction goes through the slicing of the split (pad to a square, resize to the model grid)
and back (:func:`vce.prep.slicing.from_square`); the :class:`Oracle` takes the ground truth
through exactly that path, so its score is the ceiling the resampling leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from vce.inference import run_generator, to_scanner
from vce.io.nifti import to_uint12
from vce.prep.normalization import forward, inverse
from vce.prep.slicing import SliceGeometry, from_square, to_square

#: Inversion key -> column suffix of its metrics (the paper's inversion has none).
INVERSIONS: dict[str, str] = {"gt": "", "cal": "_cal"}
INVERSION_LABELS: dict[str, str] = {
    "gt": "paper inversion (ground-truth T1C statistics)",
    "cal": "deployable calibration (T1C statistics predicted from T1/T2)",
}


@dataclass
class Case:
    """One test patient as the synthesisers see it.

    ``volumes``: registered "T1", "T2", "T1C" (z, y, x) float32 scanner units on the T2 grid;
    ``stats``: the patient's per-modality ``{"mu", "sd"}`` (``params.json``); ``t1c_stats``:
    (mu, sd) per inversion key; ``image_size``: the model grid side.
    """

    pid: str
    volumes: dict[str, np.ndarray]
    stats: dict[str, dict[str, float]]
    t1c_stats: dict[str, tuple[float, float]]
    image_size: int

    @property
    def geometry(self) -> SliceGeometry:
        return SliceGeometry.for_shape(self.volumes["T2"].shape[1:], self.image_size)


class Synthesiser(Protocol):
    """``name`` labels the row; ``info`` is written as the evaluation's ``variant.json``."""

    name: str
    info: dict[str, Any]

    def __call__(self, case: Case) -> dict[str, np.ndarray]: ...


def _scanner(pred: np.ndarray) -> np.ndarray:
    """Scanner units as the study stores images: clipped to [0, 4095], 12-bit integers, float32 (no
    body mask: the :class:`Oracle` is the truth, air included, through the resampling only)."""
    return to_uint12(np.clip(pred, 0.0, 4095.0)).astype(np.float32)


def _normalised_inputs(case: Case, modalities: tuple[str, ...], method: str) -> np.ndarray:
    """(z, C, S, S) inputs on the model grid, each modality normalised with its own statistics."""
    g = case.geometry
    return np.stack([forward(to_square(case.volumes[m], g), case.stats[m]["mu"], case.stats[m]["sd"], method)
                     for m in modalities], axis=1)


def _invert_all(case: Case, y: np.ndarray, method: str) -> dict[str, np.ndarray]:
    """Normalised (z, S, S) output -> ``{inversion: (z, y, x) scanner units}`` on the T2 grid, through
    :func:`vce.inference.to_scanner` as ``vce predict`` does: 12-bit and 0 outside the T2 body mask (air)."""
    back = from_square(y, case.geometry)
    t2 = case.volumes["T2"]
    return {inv: to_scanner(inverse(back, mu, sd, method), t2) for inv, (mu, sd) in case.t1c_stats.items()}


@dataclass
class GeneratorSynthesiser:
    """A trained generator (one study variant)."""

    generator: torch.nn.Module
    variant: dict[str, Any]
    batch_size: int = 16

    @property
    def name(self) -> str:
        return str(self.variant["name"])

    @property
    def info(self) -> dict[str, Any]:
        return self.variant

    def __call__(self, case: Case) -> dict[str, np.ndarray]:
        method = self.variant["normalization"]
        x = _normalised_inputs(case, tuple(self.variant["modalities"]), method)
        return _invert_all(case, run_generator(self.generator, x, self.batch_size), method)


@dataclass
class Oracle:
    """The ground truth T1C through the prediction's resampling (model grid and back) and 12-bit storage."""

    name: str = "oracle"

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "reference": "oracle",
                "what": "ground truth T1C resampled to the model grid and back, 12-bit: the ceiling"}

    def __call__(self, case: Case) -> dict[str, np.ndarray]:
        g = case.geometry
        pred = _scanner(from_square(to_square(case.volumes["T1C"], g), g))
        return {inv: pred for inv in case.t1c_stats}


@dataclass
class RegressorSynthesiser:
    """A voxelwise regressor on z-scored T1 and T2 (the learnability reference); ``predict``:
    (z, 2, S, S) z-scores -> (z, S, S) z-scored T1C."""

    predict: Callable[[np.ndarray], np.ndarray]
    name: str = "learnability"

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "reference": "learnability",
                "what": "voxelwise gradient-boosting regressor on local T1/T2 features (vce.learnability)"}

    def __call__(self, case: Case) -> dict[str, np.ndarray]:
        x = _normalised_inputs(case, ("T1", "T2"), "zscore")
        return _invert_all(case, np.asarray(self.predict(x), dtype=np.float32), "zscore")
