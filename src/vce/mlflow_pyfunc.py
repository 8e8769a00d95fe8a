"""The generator as an MLflow pyfunc model, logged *from code* (no pickled Python objects).

MLflow stores this file's source next to the trainer's ``checkpoint.pt`` (an artifact named
``checkpoint``). Loading (``mlflow.pyfunc.load_model(uri)``) runs this file, which rebuilds the
network from the checkpoint's plain tensors with ``torch.load(weights_only=True)``
(:func:`vce.models.checkpoint.load_generator`), so nothing arbitrary is unpickled.

The model is self-contained (:func:`vce.tracking.log_generator_model`): the ``vce`` package's
source is logged with it (``code_paths``: ``<model>/code/vce``, which MLflow puts on ``sys.path``
before running this file) and its ``requirements.txt`` pins every distribution that code imports
(:data:`vce.tracking.MODEL_DISTRIBUTIONS`). ``pip install -r <model>/requirements.txt`` in an
empty virtualenv is all a serving environment needs; ``vce`` itself need not be installed.

Model I/O (the logged signature): input ``float32 (N, C, S, S)`` normalised slices with the
variant's modalities as channels (T1 before T2), ``S`` = the training ``image_size``; output
``float32 (N, 1, S, S)`` the generator's normalised T1C. Scanner units need the inverse
normalisation and calibration that ``vce predict`` applies (the checkpoint carries both).

Only :mod:`vce.tracking` and this file import mlflow.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np


class VCEGeneratorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a trained VCE generator."""

    def load_context(self, context: Any) -> None:
        from vce.models.checkpoint import load_generator

        self.generator, self.meta = load_generator(context.artifacts["checkpoint"])

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        from vce.inference import run_generator

        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"expected (N, C, S, S) float32 slices, got shape {x.shape}")
        return run_generator(self.generator, x)[:, None]


mlflow.models.set_model(VCEGeneratorModel())
