"""The kfp components' own code (the parts beyond calling vce.steps), run as plain functions."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

from conftest import ROOT


def test_register_op_on_a_real_cohort_without_true_motion(tiny_cohort, tmp_path):
    """A real cohort has no motion.json, so no TRE: the artifact metadata must stay JSON (kfp refuses NaN)."""
    from components.data import register_op

    src = tmp_path / "cohort"
    for pid in sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[:2]:
        shutil.copytree(tiny_cohort / pid, src / pid, ignore=shutil.ignore_patterns("motion*"))
    cohort = SimpleNamespace(path=str(src), metadata={})
    registered = SimpleNamespace(path=str(tmp_path / "registered"), metadata={})
    register_op.python_func(cohort=cohort, params_yaml=(ROOT / "params.yaml").read_text(), profile="tiny",
                            registered=registered)
    assert (tmp_path / "registered").is_dir()
    json.dumps(registered.metadata, allow_nan=False)  # what kfp does with it
    assert all(math.isfinite(v) for v in registered.metadata.values())
    assert not any(k.endswith("tre_mean_mm") for k in registered.metadata)  # nothing to measure TRE against
