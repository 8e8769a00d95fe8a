"""Registration (issue 3): time per patient and TRE of our configuration vs SimpleITK defaults.

Synthetic patients (``vce.synth``, rigid + smooth B-spline motion saved with each patient) are
generated into a temporary directory; every method registers T1 -> T2 and T1C -> T2 of the same
patients, single-threaded (``SetGlobalDefaultNumberOfThreads(1)``), timed in CPU seconds of this
process (``time.process_time``: robust on a shared machine) and scored by the target
registration error against the saved true transform over the T2 body voxels (mean and 95th
percentile, mm).

Methods:

- ``ours``: ``vce.prep.registration.register_image`` with the profile's ``register:`` settings
  (centred rigid in a pyramid + B-spline, Mattes MI over the body mask, random sampling).
- ``sitk_rigid_defaults``: the plain SimpleITK recipe: centred geometric Euler3D
  initialisation, Mattes MI (50 bins), all voxels (no sampling), regular-step gradient descent
  (learning rate 1, min step 1e-4, 100 iterations) with physical-shift scales; no pyramid, no mask.
- ``sitk_bspline_defaults``: the rigid defaults, then SimpleITK's B-spline example settings:
  mesh 8 per axis, L-BFGS-B (gradient tolerance 1e-5, 5 corrections, cost factor 1e7), Mattes MI
  50 bins; single level, no mask; iterations capped (``BSPLINE_ITERATIONS``) and 10 % random
  sampling so it finishes on a CPU (10 iterations in short mode).

Full: 4 patients at the demo grid (96 x 96 x 16, 2.2 x 2.2 x 4 mm). Short: 2 patients at
64 x 64 x 12 (3.3 x 3.3 x 5.3 mm), < ~60 s. Ratios: time and TRE of the baselines over ours.
Run: ``python benchmarks/bench_registration.py [--short]``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BSPLINE_ITERATIONS = 30


def _sitk_rigid_defaults(fixed, moving):
    import SimpleITK as sitk

    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=100)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(init, inPlace=False)
    out = sitk.CompositeTransform(reg.Execute(fixed, moving))
    tx = sitk.CompositeTransform(3)
    tx.AddTransform(sitk.Euler3DTransform(out.GetNthTransform(out.GetNumberOfTransforms() - 1)))
    return tx


def _sitk_bspline_defaults(fixed, moving, iterations: int = BSPLINE_ITERATIONS):
    import SimpleITK as sitk

    rigid = sitk.Euler3DTransform(_sitk_rigid_defaults(fixed, moving).GetNthTransform(0))
    bs = sitk.BSplineTransformInitializer(fixed, [8, 8, 8], 3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5, numberOfIterations=iterations, maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=2 * iterations, costFunctionConvergenceFactor=1e7,
    )
    reg.SetMovingInitialTransform(rigid)
    reg.SetInitialTransform(bs, inPlace=True)
    reg.Execute(fixed, moving)
    tx = sitk.CompositeTransform(3)
    tx.AddTransform(rigid)
    tx.AddTransform(bs)
    return tx


def run(short: bool) -> dict[str, Any]:
    """Benchmark result (JSON-serialisable): per-method TRE mean/p95 and CPU s per patient, ratios vs ours."""
    import SimpleITK as sitk

    from vce.config import load_config
    from vce.prep.registration import body_mask, jacobian_range, register_image, registration_mask, target_registration_error
    from vce.synth.cohort import synthesize_cohort

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    cfg = load_config(ROOT / "params.yaml", "demo")
    synth = dataclasses.replace(cfg.synth, n_patients=4)
    if short:
        synth = dataclasses.replace(synth, n_patients=2, matrix=(64, 64), n_slices=12, spacing_mm=(3.3, 3.3, 5.3))
    methods = {
        "ours": lambda f, m: register_image(f, m, cfg.register, seed=cfg.seed, mask=registration_mask(f) if cfg.register.use_mask else None),
        "sitk_rigid_defaults": _sitk_rigid_defaults,
        "sitk_bspline_defaults": lambda f, m: _sitk_bspline_defaults(f, m, 10 if short else BSPLINE_ITERATIONS),
    }
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in methods}
    motion: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        t0 = time.perf_counter()
        pids = synthesize_cohort(raw, synth, seed=cfg.seed, workers=1)
        synth_s = time.perf_counter() - t0
        for pid in pids:
            fixed = sitk.Cast(sitk.ReadImage(str(raw / pid / "T2.nii.gz")), sitk.sitkFloat32)
            body = body_mask(sitk.GetArrayFromImage(fixed))
            per = {k: {"cpu_s": 0.0, "tre": []} for k in methods}
            for mod in ("T1", "T1C"):
                moving = sitk.Cast(sitk.ReadImage(str(raw / pid / f"{mod}.nii.gz")), sitk.sitkFloat32)
                truth = sitk.ReadTransform(str(raw / pid / f"motion_{mod}.tfm"))
                motion.append(target_registration_error(fixed, sitk.Euler3DTransform(), truth, body)["tre_mean_mm"])
                for name, fn in methods.items():
                    c0 = time.process_time()
                    tx = fn(fixed, moving)
                    per[name]["cpu_s"] += time.process_time() - c0
                    e = target_registration_error(fixed, tx, truth, body)
                    per[name]["tre"].append((e["tre_mean_mm"], e["tre_p95_mm"], jacobian_range(tx, fixed, body)[0]))
            for name in methods:
                t = np.asarray(per[name]["tre"])
                rows[name].append({"cpu_s_per_patient": per[name]["cpu_s"], "tre_mean_mm": float(t[:, 0].mean()),
                                   "tre_p95_mm": float(t[:, 1].mean()), "jac_min": float(t[:, 2].min())})
    summary = {
        name: {
            "cpu_s_per_patient": float(np.mean([r["cpu_s_per_patient"] for r in rs])),
            "tre_mean_mm": float(np.mean([r["tre_mean_mm"] for r in rs])),
            "tre_p95_mm": float(np.mean([r["tre_p95_mm"] for r in rs])),
            "tre_mean_mm_worst_patient": float(np.max([r["tre_mean_mm"] for r in rs])),
            "jac_min": float(np.min([r["jac_min"] for r in rs])),
        }
        for name, rs in rows.items()
    }
    ours = summary["ours"]
    ratios = {}
    for name in ("sitk_rigid_defaults", "sitk_bspline_defaults"):
        ratios[f"time_{name}_over_ours"] = summary[name]["cpu_s_per_patient"] / ours["cpu_s_per_patient"]
        ratios[f"tre_mean_{name}_over_ours"] = summary[name]["tre_mean_mm"] / ours["tre_mean_mm"]
        ratios[f"tre_p95_{name}_over_ours"] = summary[name]["tre_p95_mm"] / ours["tre_p95_mm"]
    return {
        "short": bool(short),
        "patients": len(pids),
        "grid": {"matrix": list(synth.matrix), "n_slices": synth.n_slices, "spacing_mm": list(synth.spacing_mm)},
        "true_motion_mean_mm": float(np.mean(motion)),
        "synth_wall_s": synth_s,
        "threads": 1,
        "register_config": dataclasses.asdict(cfg.register),
        "methods": summary,
        "per_patient": rows,
        "ratios": ratios,
        "summary": (
            f"{len(pids)} patients: ours {ours['cpu_s_per_patient']:.2f} CPU s/patient, TRE {ours['tre_mean_mm']:.2f} / "
            f"p95 {ours['tre_p95_mm']:.2f} mm (true motion {float(np.mean(motion)):.2f} mm); SimpleITK rigid defaults "
            f"x{ratios['time_sitk_rigid_defaults_over_ours']:.1f} time, x{ratios['tre_mean_sitk_rigid_defaults_over_ours']:.2f} "
            f"TRE; B-spline defaults x{ratios['time_sitk_bspline_defaults_over_ours']:.1f} time, "
            f"x{ratios['tre_mean_sitk_bspline_defaults_over_ours']:.2f} TRE"
        ),
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="2 small patients (< ~60 s)")
    args = ap.parse_args(argv)
    res = run(args.short)
    print(f"{'method':24s} {'cpu s/patient':>14s} {'TRE mean mm':>12s} {'TRE p95 mm':>11s} {'Jac min':>8s}")
    for name, s in res["methods"].items():
        print(f"{name:24s} {s['cpu_s_per_patient']:14.2f} {s['tre_mean_mm']:12.3f} {s['tre_p95_mm']:11.3f} {s['jac_min']:8.3f}")
    print(f"true motion mean {res['true_motion_mean_mm']:.2f} mm over {res['patients']} patients x 2 modalities")
    print(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
