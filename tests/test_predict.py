"""`vce predict` on NIfTI and DICOM inputs, in any orientation, onto the native T2 grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from test_import import write_dicom_series


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_cfg, tiny_normalized) -> Path:
    from vce import steps

    out = tmp_path_factory.mktemp("predict") / "run"
    steps.train(tiny_normalized, out, tiny_cfg, "pgmgvce_main")
    return out


def _patient(tiny_cohort: Path) -> Path:
    return sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]


def _predict(*args: str) -> int:
    from vce.cli import main

    return main(["predict", *args, "--profile", "tiny"])


def test_output_on_native_grid_of_a_reoriented_t2(model_dir, tiny_cohort, tmp_path):
    """A T2 stored in another orientation (RAS, axes flipped) gives the same synthetic voxels,
    written on that T2's own grid: the canonical reorientation is undone exactly."""
    pdir = _patient(tiny_cohort)
    t2 = sitk.ReadImage(str(pdir / "T2.nii.gz"))
    ras = sitk.DICOMOrient(t2, "RAS")
    sitk.WriteImage(ras, str(tmp_path / "T2_ras.nii.gz"))
    a, b = tmp_path / "lps.nii.gz", tmp_path / "ras.nii.gz"
    assert _predict("--t1", str(pdir / "T1.nii.gz"), "--t2", str(pdir / "T2.nii.gz"), "--model", str(model_dir), "--out", str(a)) == 0
    assert _predict("--t1", str(pdir / "T1.nii.gz"), "--t2", str(tmp_path / "T2_ras.nii.gz"), "--model", str(model_dir),
                    "--out", str(b)) == 0
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert ib.GetSize() == ras.GetSize()
    np.testing.assert_allclose(ib.GetDirection(), ras.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(ib.GetOrigin(), ras.GetOrigin(), atol=1e-4)
    # same voxels up to float rounding of the registration (a few voxels may differ by 1 unit)
    diff = np.abs(sitk.GetArrayFromImage(sitk.DICOMOrient(ib, "LPS")).astype(int) - sitk.GetArrayFromImage(ia))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    arr = sitk.GetArrayFromImage(ia)
    assert arr.min() >= 0 and arr.max() <= 4095 and arr.max() > 0


def test_predict_from_dicom_series_folders(model_dir, tiny_cohort, tmp_path):
    """T1 and T2 as DICOM series folders (a PACS export with several series): the T1 / T2 series are
    picked by the default rules, and the output lies on the DICOM T2's grid."""
    pdir = _patient(tiny_cohort)
    arr = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / f"{m}.nii.gz"))).astype(np.int16) for m in ("T1", "T2")}
    sp = sitk.ReadImage(str(pdir / "T2.nii.gz")).GetSpacing()
    folder = tmp_path / "dicom"
    write_dicom_series(folder / "s3", arr["T1"], "AX T1 SE", 3, spacing=sp)
    write_dicom_series(folder / "s5", arr["T2"], "AX T2 TSE", 5, spacing=sp)
    out = tmp_path / "vce.nii.gz"
    assert _predict("--t1", str(folder), "--t2", str(folder), "--model", str(model_dir), "--out", str(out)) == 0
    from vce.io.images import read_image

    t2 = read_image(folder, rule="T2")
    img = sitk.ReadImage(str(out))
    assert img.GetSize() == t2.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), t2.GetSpacing(), rtol=1e-5)
    assert "SYNTHETIC" in img.GetMetaData("descrip")
    assert not any(p.name.startswith(".") or "tmp" in p.name for p in tmp_path.iterdir() if p != folder)


def test_predict_refuses_bad_inputs(model_dir, tiny_cohort, tmp_path, capsys):
    pdir = _patient(tiny_cohort)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    cases = {
        "missing T1": ["--t1", str(tmp_path / "nope.nii.gz"), "--t2", str(pdir / "T2.nii.gz"), "--model", str(model_dir)],
        "T2 folder without DICOM": ["--t1", str(pdir / "T1.nii.gz"), "--t2", str(tmp_path / "empty"), "--model", str(model_dir)],
        "non-image": ["--t1", str(tmp_path / "notes.txt"), "--t2", str(pdir / "T2.nii.gz"), "--model", str(model_dir)],
        "no model": ["--t1", str(pdir / "T1.nii.gz"), "--t2", str(pdir / "T2.nii.gz"), "--model", str(tmp_path / "empty")],
    }
    for what, args in cases.items():
        out = tmp_path / f"{what.replace(' ', '_')}.nii.gz"
        assert _predict(*args, "--out", str(out)) == 2, what
        assert not out.exists(), what
        err = capsys.readouterr().err
        assert "error" in err and str(tmp_path) in err or str(pdir) in err, (what, err)


def test_predict_refuses_a_16_bit_input_naming_it(model_dir, tiny_cohort, tmp_path, capsys):
    """A T2 scaled to uint16 would be predicted clipped to the 12-bit range: refused, named, nothing written."""
    import SimpleITK as sitk

    pdir = _patient(tiny_cohort)
    t2 = sitk.ReadImage(str(pdir / "T2.nii.gz"), sitk.sitkFloat32)
    big = sitk.Cast(sitk.RescaleIntensity(t2, 0, 65535), sitk.sitkUInt16)
    sitk.WriteImage(big, str(tmp_path / "T2_16bit.nii.gz"))
    out = tmp_path / "pred.nii.gz"
    assert _predict("--t1", str(pdir / "T1.nii.gz"), "--t2", str(tmp_path / "T2_16bit.nii.gz"),
                    "--model", str(model_dir), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "T2_16bit.nii.gz" in err and "12-bit" in err and "Traceback" not in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["T2_16bit.nii.gz"]


@pytest.mark.parametrize("out, message", [
    ("x.txt", "{out}: the output must be a NIfTI file ending in .nii.gz or .nii (got .txt)"),
    ("synthetic", "{out}: the output must be a NIfTI file ending in .nii.gz or .nii (got no extension)"),
    ("nodir/x.nii.gz", "{out}: its directory {tmp}/nodir does not exist (create it first)"),
    ("notes.txt/x.nii.gz", "{out}: {tmp}/notes.txt is not a directory"),
    ("adir", "{out}: is a directory; --out names the output file, e.g. {tmp}/adir/synthetic_t1c.nii.gz"),
])
def test_predict_refuses_a_bad_output_before_any_work(tmp_path, capsys, out, message):
    """The output is checked first: the model and inputs named here do not even exist."""
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "adir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    target = tmp_path / out
    rc = _predict("--t1", str(tmp_path / "no_t1.nii.gz"), "--t2", str(tmp_path / "no_t2.nii.gz"),
                  "--model", str(tmp_path / "no_model"), "--out", str(target))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip() == "vce predict: error: " + message.format(out=target, tmp=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_prediction_is_zero_outside_the_t2_body_mask(model_dir, tiny_registered, tiny_cohort, tmp_path):
    """The one conversion to scanner units (vce.inference.to_scanner) zeroes the air and leaves the
    body alone: checked on a real prediction against the generator's raw inverse, and on the
    NIfTI `vce predict` writes."""
    from vce.inference import input_statistics, run_generator, synthesize_t1c
    from vce.models.checkpoint import load_generator
    from vce.prep.normalization import apply_calibration, forward, inverse
    from vce.prep.slicing import SliceGeometry, body_mask, from_square, to_square

    generator, meta = load_generator(model_dir / "checkpoint.pt")
    md, variant = meta["metadata"], meta["variant"]
    pdir = sorted(p for p in tiny_registered.iterdir() if p.is_dir())[0]
    vols = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / f"{m}.nii.gz"))).astype(np.float32) for m in ("T1", "T2")}
    size = int(md["image_size"])
    stats = input_statistics(vols, size, float(md["min_body_fraction"]), float(md["max_fov_missing"]))
    mu, sd = apply_calibration(md["calibration"], stats)
    pred = synthesize_t1c(generator, variant, vols, stats, (mu, sd), size)

    geom = SliceGeometry.for_shape(vols["T2"].shape[1:], size)
    x = np.stack([forward(to_square(vols[m], geom), stats[m]["mu"], stats[m]["sd"], variant["normalization"])
                  for m in variant["modalities"]], axis=1)
    raw = inverse(from_square(run_generator(generator, x), geom), mu, sd, variant["normalization"])
    raw = np.clip(np.rint(raw), 0, 4095)
    body = body_mask(vols["T2"])
    air = ~body
    assert air.any() and body.any()
    assert np.median(raw[air]) > 0  # the grey halo the mask removes
    assert np.all(pred[air] == 0)
    np.testing.assert_array_equal(pred[body], raw[body])

    # the NIfTI of `vce predict` on the raw (unregistered) inputs: 0 outside its T2's body mask
    src = _patient(tiny_cohort)
    out = tmp_path / "p.nii.gz"
    assert _predict("--t1", str(src / "T1.nii.gz"), "--t2", str(src / "T2.nii.gz"), "--model", str(model_dir),
                    "--out", str(out)) == 0
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    t2 = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "T2.nii.gz"))).astype(np.float32)
    assert np.all(written[~body_mask(t2)] == 0) and written[body_mask(t2)].max() > 0
