"""Tests of the physics-based synthetic cohort generator (vce.synth)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vce.config import SynthConfig
from vce.io.nifti import PATIENT_FILES
from vce.synth import cohort as cohort_mod
from vce.synth.cohort import synthesize_cohort, synthesize_patient
from vce.synth.motion import rigid_from_dict
from vce.synth.tissues import LABELS

TINY = SynthConfig(n_patients=2, matrix=(48, 48), n_slices=6, spacing_mm=(4.4, 4.4, 8.0))
SEED = 7


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("synth") / "raw"
    pids = synthesize_cohort(out, TINY, SEED)
    return out, pids


def test_layout_dtypes_and_range(tiny_cohort):
    out, pids = tiny_cohort
    assert pids == ["P001", "P002"]
    assert sorted(p.name for p in out.iterdir()) == ["P001", "P002", "cohort.json", "montage.png"]
    assert (out / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == SEED and meta["patients"] == pids
    assert meta["config"]["n_patients"] == 2
    assert {"wm", "gm", "csf", "enhancing", "nonenhancing", "necrosis", "oedema", "choroid", "mucosa"} <= set(meta["tissues"])
    for pid in pids:  # per-sequence SNR is applied and recorded
        sc = meta["summary"][pid]["scanner"]
        assert [sc[m]["snr_wm"] for m in ("T1", "T2", "T1C")] == [TINY.snr_t1, TINY.snr_t2, TINY.snr_t1c]
    for pid in pids:
        d = out / pid
        names = {p.name for p in d.iterdir()}
        required = set(PATIENT_FILES.values()) | {"motion.json"}
        assert required <= names and all(n in required or n.startswith("motion") for n in names), names
        t2 = sitk.ReadImage(str(d / "T2.nii.gz"))
        assert t2.GetSize() == (48, 48, 6)
        assert np.allclose(t2.GetSpacing(), (4.4, 4.4, 8.0))
        assert np.allclose(t2.GetDirection(), np.eye(3).ravel())
        for key in ("T1", "T2", "T1C"):
            img = sitk.ReadImage(str(d / PATIENT_FILES[key]))
            assert img.GetPixelID() == sitk.sitkInt16, key
            assert img.GetSize() == t2.GetSize()
            assert np.allclose(img.GetOrigin(), t2.GetOrigin()) and np.allclose(img.GetSpacing(), t2.GetSpacing())
            assert np.allclose(img.GetDirection(), t2.GetDirection())
            a = _arr(img)
            assert a.min() >= 0 and a.max() <= 4095, key
            assert a.max() > 2500, f"{pid} {key}: the body should fill most of the 12-bit range"
            corner = a[:, :3, :3]
            assert corner.mean() < 0.05 * a.max(), f"{pid} {key}: background is not near 0"
        mask = sitk.ReadImage(str(d / PATIENT_FILES["mask"]))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(_arr(mask))) <= {0, 1}
        mo = json.loads((d / "motion.json").read_text())
        assert set(mo) == {"T1", "T1C"}
        for m in mo.values():
            assert m["transform"] == "Euler3DTransform"
            assert len(m["center_mm"]) == len(m["rotation_rad"]) == len(m["translation_mm"]) == 3
            assert max(abs(r) for r in m["rotation_rad"]) <= np.radians(TINY.max_rotation_deg) + 1e-9
            assert max(abs(t) for t in m["translation_mm"]) <= TINY.max_translation_mm + 1e-9
            assert "fixed=T2" in m["convention"]


def test_deterministic_and_seed_dependent(tiny_cohort, tmp_path):
    out, _ = tiny_cohort
    again = tmp_path / "again"
    synthesize_cohort(again, TINY, SEED, workers=2)  # also: worker count does not change the bytes
    assert _digests(again) == _digests(out)
    other = tmp_path / "other"
    synthesize_cohort(other, TINY, SEED + 1)
    a, b = _digests(out), _digests(other)
    for pid in ("P001", "P002"):
        for f in ("T1.nii.gz", "T2.nii.gz", "T1C.nii.gz"):
            assert a[f"{pid}/{f}"] != b[f"{pid}/{f}"]


def test_patient_depends_only_on_seed_and_index(tiny_cohort):
    out, _ = tiny_cohort
    bigger = SynthConfig(**{**TINY.__dict__, "n_patients": 5})
    res = synthesize_patient("P002", 1, bigger, SEED)
    for key in ("T1", "T2", "T1C", "mask", "T1C_clean", "wm"):
        on_disk = _arr(sitk.ReadImage(str(out / "P002" / PATIENT_FILES[key])))
        assert np.array_equal(on_disk, _arr(res.images[key])), key


def test_tumour_mask_nonempty_and_inside_head(tiny_cohort):
    out, pids = tiny_cohort
    for pid in pids:
        mask = _arr(sitk.ReadImage(str(out / pid / PATIENT_FILES["mask"]))).astype(bool)
        t2 = _arr(sitk.ReadImage(str(out / pid / "T2.nii.gz"))).astype(float)
        assert mask.sum() > 0, pid
        background = t2[:, :3, :3].mean()
        assert np.all(t2[mask] > 4 * background), f"{pid}: tumour voxels outside the head"
        # tumours are intracranial: never in the outermost in-plane rows/columns (air / scalp)
        assert not mask[:, :4].any() and not mask[:, -4:].any() and not mask[:, :, :4].any() and not mask[:, :, -4:].any()


def test_physics_contrasts():
    cfg = SynthConfig(n_patients=2, matrix=(64, 64), n_slices=8, spacing_mm=(3.3, 3.3, 5.0))
    lab = {name: i for i, name in enumerate(LABELS)}
    pooled: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in ("T1", "T2", "T1C")}
    for index in range(2):
        res = synthesize_patient(f"P{index + 1:03d}", index, cfg, SEED, motion=False, return_maps=True)
        labels = res.maps["T2"]
        assert np.array_equal(labels, res.maps["T1C"])  # no motion: same anatomy on every grid
        mask = _arr(res.images["mask"]).astype(bool)
        assert mask.sum() > 0
        assert np.isin(labels[mask], [lab["enhancing"], lab["nonenhancing"], lab["necrosis"]]).mean() > 0.8
        for scan in pooled:
            a = _arr(res.images[scan]).astype(float)
            for name in ("wm", "gm", "csf", "enhancing", "necrosis", "oedema", "fat"):
                pooled[scan].setdefault(name, []).append(a[labels == lab[name]])
    m = {s: {k: float(np.concatenate(v).mean()) if sum(map(len, v)) else float("nan") for k, v in d.items()}
         for s, d in pooled.items()}
    # T1-weighted spin echo: WM brighter than GM, CSF dark, fat bright
    assert m["T1"]["wm"] > m["T1"]["gm"] > m["T1"]["csf"]
    assert m["T1"]["fat"] > m["T1"]["wm"]
    # T2-weighted spin echo: CSF brightest, GM > WM
    assert m["T2"]["csf"] > m["T2"]["gm"] > m["T2"]["wm"]
    # gadolinium: the enhancing tumour is bright on T1C, necrosis and oedema are not
    assert m["T1C"]["enhancing"] > 1.5 * m["T1C"]["oedema"]
    assert m["T1C"]["enhancing"] / m["T1C"]["wm"] > 1.5
    assert m["T1C"]["enhancing"] / m["T1C"]["wm"] > 1.5 * (m["T1"]["enhancing"] / m["T1"]["wm"])
    if np.isfinite(m["T1C"]["necrosis"]):
        assert m["T1C"]["enhancing"] > 1.5 * m["T1C"]["necrosis"]
    # before contrast the cellular enhancing tumour is brighter than oedema on T1-w (shorter T1)
    assert m["T1"]["enhancing"] > m["T1"]["oedema"]


def test_enhancement_is_visible_before_contrast_but_not_trivially():
    """Issue 10: the tumour differs from its surround on T1/T2 (as real enhancing tumour differs
    from oedema), so enhancement is learnable from the inputs, but not perfectly."""
    from vce.learnability import input_auc
    from vce.metrics.enhancement import ring

    cfg = SynthConfig(n_patients=3, matrix=(64, 64), n_slices=8, spacing_mm=(3.3, 3.3, 5.0))
    aucs = []
    for index in range(3):
        res = synthesize_patient(f"P{index + 1:03d}", index, cfg, SEED, motion=False)
        a = {s: _arr(res.images[s]).astype(float) for s in ("T1", "T2", "T1C_clean")}
        tumour = _arr(res.images["mask"]).astype(bool)
        body = a["T2"] > 0.1 * a["T2"].max()
        auc = input_auc(a["T1"], a["T2"], tumour, ring(tumour, 3, body) & ~tumour, a["T1C_clean"])
        aucs.append(max(auc["auc_t1"], auc["auc_t2"]))
        assert auc["auc_t1c"] > max(auc["auc_t1"], auc["auc_t2"]), (index, auc)  # the contrast adds information
    assert 0.65 < float(np.mean(aucs)) < 0.97, aucs


def test_enhancement_follows_the_tissue():
    """Within the viable tumour, uptake goes with the tissue field h (leakiness ~ extracellular
    water), which also lengthens T2: pure enhancing tissue with higher h is brighter on T2-w and on T1C."""
    from vce.synth import lesions as L
    from vce.synth.cohort import COMPARTMENTS, _signal
    from vce.synth.signal import SEQUENCES
    from vce.synth.tissues import sample_patient_tissues

    rng = np.random.default_rng(0)
    les = L.random_lesion_shape(rng, np.zeros(3), 15.0, solid=True)
    pts = rng.uniform(-10, 10, size=(4000, 3))
    ev = les.evaluate(pts)
    assert ev["core"].max() == 0.0  # solid: no necrosis
    inside = ev["enhancing"] > 0.5
    assert inside.sum() > 500
    assert _corr(ev["h"][inside], ev["uptake"][inside]) > 0.5
    ring_les = L.random_lesion_shape(np.random.default_rng(1), np.zeros(3), 15.0, solid=False)
    assert ring_les.evaluate(np.zeros((1, 3)))["core"][0] > 0.5  # ring-enhancing: necrotic centre
    tissues = sample_patient_tissues(np.random.default_rng(2), variation=0.0)
    h = np.linspace(-2, 2, 9)
    frac = {k: np.zeros(9) for k in COMPARTMENTS}
    frac["enhancing"][:] = 1.0
    uptake = les.uptake * np.clip(1.0 + L.UPTAKE_PER_LEAK * L.RHO_LEAK * h, 0.3, 2.0)
    t2 = _signal(SEQUENCES["T2"], tissues, frac, {"uptake": uptake, "h": h})
    t1c = _signal(SEQUENCES["T1C"], tissues, frac, {"uptake": uptake, "h": h})
    assert np.all(np.diff(t2) > 0) and np.all(np.diff(t1c) > 0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_motion_convention_aligns_to_t2():
    """sitk.Resample(T1, T2, transform from motion.json) undoes the simulated motion."""
    cfg = SynthConfig(
        n_patients=1, matrix=(48, 48), n_slices=8, spacing_mm=(4.4, 4.4, 6.0), max_rotation_deg=8.0, max_translation_mm=8.0
    )
    moved = synthesize_patient("P001", 0, cfg, SEED)
    still = synthesize_patient("P001", 0, cfg, SEED, motion=False)
    assert np.array_equal(_arr(moved.images["T2"]), _arr(still.images["T2"]))
    for mod in ("T1", "T1C"):
        t = rigid_from_dict(json.loads(json.dumps(moved.motion[mod])))
        assert np.degrees(np.abs(t.GetParameters()[:3])).max() > 1.0  # the test needs real motion
        img = sitk.Cast(moved.images[mod], sitk.sitkFloat32)
        aligned = _arr(sitk.Resample(img, moved.images["T2"], t, sitk.sitkLinear, -1.0, sitk.sitkFloat32))
        valid = aligned >= 0
        ref = _arr(still.images[mod]).astype(float)[valid]
        c_aligned = _corr(aligned[valid], ref)
        c_raw = _corr(_arr(moved.images[mod]).astype(float)[valid], ref)
        c_wrong = _corr(
            _arr(sitk.Resample(img, moved.images["T2"], t.GetInverse(), sitk.sitkLinear, -1.0, sitk.sitkFloat32))[
                valid
            ],
            ref,
        )
        assert c_aligned > 0.9, (mod, c_aligned)
        assert c_aligned > c_raw + 0.05, (mod, c_aligned, c_raw)
        assert c_aligned > c_wrong + 0.05, (mod, c_aligned, c_wrong)


def test_atomic_on_failure(monkeypatch, tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "previous.txt").write_text("old output")
    real = cohort_mod.synthesize_patient
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure in patient 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(cohort_mod, "synthesize_patient", flaky)
    with pytest.raises(RuntimeError, match="simulated failure"):
        synthesize_cohort(out, TINY, SEED)
    # the previous output is untouched and no partial cohort or temporary directory is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        calls["n"] = 1
        synthesize_cohort(fresh, TINY, SEED)
    assert not fresh.exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_patients": 0}, "n_patients"),
        ({"n_slices": 0}, "n_slices"),
        ({"matrix": (4, 48)}, "matrix"),
        ({"spacing_mm": (0.0, 4.4, 8.0)}, "spacing_mm"),
        ({"spacing_mm": (4.4, -1.0, 8.0)}, "spacing_mm"),
        ({"max_rotation_deg": -1.0}, "max_rotation_deg"),
        ({"max_translation_mm": float("nan")}, "max_translation_mm"),
        ({"snr_t1": 0.0}, "snr_t1"),
        ({"snr_t2": -1.0}, "snr_t2"),
        ({"snr_t1c": float("inf")}, "snr_t1c"),
    ],
)
def test_bad_config_raises(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):  # at SynthConfig(...): settings are checked in vce.config
        synthesize_cohort(tmp_path / "raw", SynthConfig(**{**TINY.__dict__, **kwargs}), SEED)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("seed, workers, match", [(-1, 1, "seed"), (1.5, 1, "seed"), (1, 0, "workers")])
def test_bad_arguments_raise(tmp_path, seed, workers, match):
    with pytest.raises(ValueError, match=match):
        synthesize_cohort(tmp_path / "raw", TINY, seed, workers=workers)


def test_normal_enhancing_structures_in_atlas():
    """Choroid plexus sits in the lateral ventricles, sinus mucosa in front of the frontal lobes,
    and both enhance (T1C/T1 signal ratio well above the brain's, from the signal equations)."""
    from vce.synth.anatomy import CHANNELS, load_atlas
    from vce.synth.signal import SEQUENCES
    from vce.synth.tissues import TISSUES

    atlas = load_atlas()
    ch = atlas.channels
    vox_ml = float(np.prod(atlas.spacing)) / 1000.0
    idx = {n: i for i, n in enumerate(CHANNELS)}
    zz, yy, xx = np.indices(ch.shape[:3])
    # LPS physical coordinates of voxel centres (direction diag(-1, -1, 1)) -> RAS (MNI)
    x_ras = -(atlas.origin[0] - atlas.spacing[0] * xx)
    y_ras = -(atlas.origin[1] - atlas.spacing[1] * yy)
    for name, lo_ml, where in (("choroid", 0.5, lambda: (np.abs(x_ras) > 4) & (y_ras < 10) & (y_ras > -60)),
                               ("mucosa", 0.5, lambda: y_ras > 45)):
        f = ch[..., idx[name]]
        assert f.sum() * vox_ml > lo_ml, name
        assert f[where()].sum() / f.sum() > 0.99, name
    assert np.all(ch.sum(-1) <= 1.0 + 1e-5)

    def enh(t):
        s1 = SEQUENCES["T1"].signal(t.pd, *t.relaxation(0.0))
        s1c = SEQUENCES["T1C"].signal(t.pd, *t.relaxation(t.gd_mM))
        s1c0 = SEQUENCES["T1C"].signal(t.pd, *t.relaxation(0.0))
        return float(s1c / s1c0), float(s1c / s1)

    for name in ("choroid", "mucosa"):
        assert enh(TISSUES[name])[0] > 1.5 * enh(TISSUES["wm"])[0], name


# ------------------------------------------------------------------------------------------------
# noise-free T1C and normal-appearing white matter (issue 9)


def _acquire_before_t1c_clean(rng, clean, seq, tissues, snr, ref):
    """``cohort._acquire`` as it was before T1C_clean existed (commit aeba1a1), verbatim but for
    the names: the reference that the noisy scans and the random stream did not change."""
    from vce.io.nifti import to_uint12
    from vce.synth.signal import bias_field, rician

    bias = bias_field(rng, clean.shape, cohort_mod.BIAS_AMPLITUDE)
    clean = clean * bias
    wm = tissues["wm"]
    s_wm = float(seq.signal(wm.pd, *wm.relaxation(wm.gd_mM if seq.contrast else 0.0)))
    sigma = s_wm / snr
    noisy = rician(rng, clean, sigma)
    body = clean > 0.05 * clean.max()
    p995 = float(np.percentile(clean[body], 99.5)) if body.any() else float(clean.max() or 1.0)
    target = float(rng.uniform(0.78, 0.9)) * 4095.0
    gain = target / max(p995, 1e-12)
    img = cohort_mod._on_grid(to_uint12(noisy * gain), ref)
    info = {"gain": round(gain, 3), "snr_wm": snr, "noise_sigma": round(sigma * gain, 3), "sequence": seq.to_dict()}
    return img, info, gain, bias


def test_noise_free_t1c_draws_nothing():
    """Same stream in, same noisy image, scanner entry and stream state out as before T1C_clean;
    the clean image is the same bias x gain, 12-bit rounded, without the noise."""
    from vce.synth.signal import SEQUENCES
    from vce.synth.tissues import sample_patient_tissues

    ref = sitk.Image([20, 16, 3], sitk.sitkUInt8)
    tissues = sample_patient_tissues(np.random.default_rng(0))
    clean = np.random.default_rng(1).uniform(0.0, 0.3, size=(3, 16, 20))
    clean[:, :, :4] = 0.0  # air
    old_rng, new_rng = np.random.default_rng(5), np.random.default_rng(5)
    old_img, old_info, gain, bias = _acquire_before_t1c_clean(old_rng, clean, SEQUENCES["T1C"], tissues, 30.0, ref)
    acq = cohort_mod._acquire(new_rng, clean, SEQUENCES["T1C"], tissues, 30.0, ref)
    assert np.array_equal(_arr(acq.image), _arr(old_img)) and acq.info == old_info
    assert old_rng.bit_generator.state == new_rng.bit_generator.state  # later scans see the same draws
    expected = np.clip(np.rint(clean * bias * gain), 0, 4095).astype(np.int16)
    assert acq.clean.GetPixelID() == sitk.sitkInt16 and np.array_equal(_arr(acq.clean), expected)
    assert np.all(_arr(acq.clean)[:, :, :4] == 0) and _arr(acq.image)[:, :, :4].mean() > 1  # noise only in the noisy one


def test_t1c_clean_is_the_t1c_without_noise(tiny_cohort):
    out, pids = tiny_cohort
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["files"]["T1C_clean"] == "T1C_clean.nii.gz" and meta["files"]["wm"] == "wm_mask.nii.gz"
    for pid in pids:
        t1c = sitk.ReadImage(str(out / pid / "T1C.nii.gz"))
        clean = sitk.ReadImage(str(out / pid / "T1C_clean.nii.gz"))
        assert clean.GetPixelID() == sitk.sitkInt16 and clean.GetSize() == t1c.GetSize()
        assert np.allclose(clean.GetOrigin(), t1c.GetOrigin()) and np.allclose(clean.GetDirection(), t1c.GetDirection())
        wm = _arr(sitk.ReadImage(str(out / pid / "wm_mask.nii.gz"))).astype(bool)
        diff = (_arr(t1c).astype(float) - _arr(clean))[wm]
        sigma = meta["summary"][pid]["scanner"]["T1C"]["noise_sigma"]
        # in white matter (SNR 30) Rician noise is ~Gaussian: mean ~0, sd = the recorded sigma
        assert abs(diff.mean()) < 0.15 * sigma and 0.85 < diff.std() / sigma < 1.15, (pid, diff.mean(), diff.std(), sigma)


def test_wm_mask_is_normal_white_matter_away_from_the_lesion():
    from scipy.ndimage import binary_dilation

    lab = {name: i for i, name in enumerate(LABELS)}
    res = synthesize_patient("P001", 0, TINY, SEED, return_maps=True)
    wm = _arr(res.images["wm"])
    assert res.images["wm"].GetPixelID() == sitk.sitkUInt8 and set(np.unique(wm)) == {0, 1}
    assert res.images["wm"].GetSize() == res.images["T2"].GetSize()
    wm = wm.astype(bool)
    labels = res.maps["T2"]
    assert np.all(labels[wm] == lab["wm"])  # >= 90 % white matter: WM is the dominant compartment
    lesion = np.isin(labels, [lab["enhancing"], lab["nonenhancing"], lab["necrosis"], lab["oedema"]]) | _arr(res.images["mask"]).astype(bool)
    assert lesion.any()
    disc = np.zeros((1, 5, 5), bool)
    disc[0, 2, :] = disc[0, :, 2] = True
    disc[0, 1:4, 1:4] = True  # radius-2 disc in-plane
    assert not (wm & binary_dilation(lesion, structure=disc)).any()
    assert wm.sum() >= 100  # a usable reference region even at 4.4 x 4.4 x 8 mm (partial volume: ~1/5 of WM-dominant voxels)
