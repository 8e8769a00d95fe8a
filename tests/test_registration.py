import json

import numpy as np
import pandas as pd
import SimpleITK as sitk

from vce.config import RegisterConfig
from vce.prep.registration import body_mask, register_rigid, target_registration_error


def test_registration_reduces_misalignment_on_tiny_cohort(tiny_registered):
    """At the tiny profile's coarse voxels (4.4 x 4.4 x 8 mm) the motion is only partly observable."""
    qc = pd.read_csv(tiny_registered / "qc.csv")
    for mod in ("T1", "T1C"):
        assert qc[f"{mod}_tre_mean_mm"].mean() < 0.8 * qc[f"{mod}_motion_mean_mm"].mean()
        assert qc[f"{mod}_mi_after"].mean() < qc[f"{mod}_mi_before"].mean()  # Mattes MI (negated) improves


def test_registration_recovers_synthetic_motion_at_demo_resolution(tmp_path, tiny_cfg):
    """One synthetic patient at the demo grid: the saved true motion is recovered to sub-millimetre."""
    import dataclasses

    from vce.config import load_config
    from vce.prep.registration import register_patient
    from vce.synth.cohort import synthesize_cohort

    demo = load_config(tiny_cfg_path(), "demo")
    synthesize_cohort(tmp_path / "raw", dataclasses.replace(demo.synth, n_patients=1), seed=11, workers=1)
    qc = register_patient(tmp_path / "raw" / "P001", tmp_path / "reg" / "P001", demo.register)
    for mod in ("T1", "T1C"):
        assert qc[f"{mod}_motion_mean_mm"] > 1.0
        assert qc[f"{mod}_tre_mean_mm"] < 1.0
        assert qc[f"{mod}_tre_mean_mm"] < 0.3 * qc[f"{mod}_motion_mean_mm"]


def tiny_cfg_path():
    from conftest import ROOT

    return ROOT / "params.yaml"


def test_registered_volumes_are_on_the_t2_grid(tiny_cohort, tiny_registered):
    pid = sorted(p.name for p in tiny_registered.iterdir() if p.is_dir())[0]
    t2 = sitk.ReadImage(str(tiny_cohort / pid / "T2.nii.gz"))
    for f in ("T1", "T2", "T1C", "tumor_mask"):
        img = sitk.ReadImage(str(tiny_registered / pid / f"{f}.nii.gz"))
        assert img.GetSize() == t2.GetSize()
        np.testing.assert_allclose(img.GetOrigin(), t2.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(img.GetSpacing(), t2.GetSpacing(), atol=1e-6)
    qc = json.loads((tiny_registered / pid / "qc.json").read_text())
    assert qc["patient"] == pid and "T1_mi_after" in qc


def test_rigid_registration_on_template_motion():
    """Independent of the synthetic cohort: a known Euler motion of a smooth 3D phantom."""
    z, y, x = np.mgrid[:24, :48, :48].astype(np.float32)
    vol = np.exp(-((x - 22) ** 2 / 120 + (y - 26) ** 2 / 60 + (z - 12) ** 2 / 30)) * 1000
    vol += 400 * np.exp(-((x - 30) ** 2 / 20 + (y - 18) ** 2 / 30 + (z - 10) ** 2 / 15))
    fixed = sitk.GetImageFromArray(vol)
    fixed.SetSpacing((2.0, 2.0, 3.0))
    true = sitk.Euler3DTransform()
    true.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([24, 24, 12]))
    true.SetRotation(0.04, -0.03, 0.05)
    true.SetTranslation((3.0, -2.0, 1.5))
    moving = sitk.Resample(fixed, fixed, true.GetInverse(), sitk.sitkLinear, 0.0)
    cfg = RegisterConfig(shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 0.0), iterations=100, sampling_fraction=0.5)
    est = register_rigid(fixed, moving, cfg)
    body = body_mask(vol)
    before = target_registration_error(fixed, sitk.Euler3DTransform(), true, body)["tre_mean_mm"]
    after = target_registration_error(fixed, est, true, body)["tre_mean_mm"]
    assert before > 2.0
    assert after < 0.5
