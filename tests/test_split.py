import json

import numpy as np
import pandas as pd
import pytest

from vce.io.errors import VCEInputError
from vce.prep.slicing import SliceGeometry, from_square, to_square
from vce.prep.split import assign_split


def test_no_patient_in_both_splits(tiny_split):
    m = pd.read_csv(tiny_split / "manifest.csv")
    assert set(m.split) == {"train", "test"}
    assert m.patient.is_unique
    idx = {s: pd.read_csv(tiny_split / s / "index.csv") for s in ("train", "test")}
    assert set(idx["train"].patient).isdisjoint(set(idx["test"].patient))
    for s in ("train", "test"):
        assert set(idx[s].patient) == set(m.loc[m.split == s, "patient"])
        n = len(idx[s])
        for f in ("T1", "T2", "T1C"):
            a = np.load(tiny_split / s / f"{f}.npy", mmap_mode="r")
            assert a.shape == (n, 32, 32) and a.dtype == np.float32
        assert n == m.loc[m.split == s, "n_slices"].sum()


def test_ratio_is_seven_to_one():
    pids = [f"P{i:03d}" for i in range(80)]
    a = assign_split(pids, 0.125, seed=1)
    assert sum(v == "test" for v in a.values()) == 10
    assert assign_split(pids, 0.125, seed=1) == a
    assert assign_split(pids, 0.125, seed=2) != a


def test_cohort_too_small():
    with pytest.raises(VCEInputError, match="too small"):
        assign_split(["P001"], 0.125, seed=0)


def test_split_rerun_is_identical(tmp_path, tiny_cfg, tiny_registered, tiny_split):
    from vce import steps

    steps.split(tiny_registered, tmp_path / "again", tiny_cfg)
    a = json.loads((tiny_split / "split.json").read_text())
    b = json.loads((tmp_path / "again" / "split.json").read_text())
    assert a["split_id"] == b["split_id"]
    for f in ("T1", "T1C"):
        assert np.array_equal(np.load(tiny_split / "train" / f"{f}.npy"), np.load(tmp_path / "again" / "train" / f"{f}.npy"))


def test_changed_input_changes_split_identity(tmp_path, tiny_cfg, tiny_registered, tiny_split):
    import shutil

    import SimpleITK as sitk

    from vce import steps

    reg = tmp_path / "reg"
    shutil.copytree(tiny_registered, reg)
    pid = sorted(p.name for p in reg.iterdir() if p.is_dir())[0]
    img = sitk.ReadImage(str(reg / pid / "T1.nii.gz"))
    sitk.WriteImage(img * 1.01, str(reg / pid / "T1.nii.gz"))
    steps.split(reg, tmp_path / "s", tiny_cfg)
    a = json.loads((tiny_split / "split.json").read_text())["split_id"]
    assert json.loads((tmp_path / "s" / "split.json").read_text())["split_id"] != a


@pytest.mark.parametrize("shape", [(40, 56), (56, 40), (32, 32), (33, 47)])
def test_square_resize_round_trip(shape):
    rng = np.random.default_rng(0)
    vol = rng.random((3, *shape)).astype(np.float32)
    g = SliceGeometry.for_shape(shape, size=max(shape))
    sq = to_square(vol, g)
    assert sq.shape == (3, max(shape), max(shape))
    np.testing.assert_array_equal(from_square(sq, g), vol)  # no resampling: exact
    g2 = SliceGeometry.for_shape(shape, size=24)
    back = from_square(to_square(vol, g2), g2)
    assert back.shape == vol.shape
    smooth = np.broadcast_to(np.linspace(0, 1, shape[1], dtype=np.float32), vol.shape)
    assert np.abs(from_square(to_square(smooth, g2), g2) - smooth).mean() < 0.05
