import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vce.io.errors import VCEInputError
from vce.prep.slicing import SliceGeometry, from_square, to_square
from vce.prep.split import assign_split


def test_no_patient_in_both_splits(tiny_split, tiny_cfg):
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
            size = tiny_cfg.split.image_size
            assert a.shape == (n, size, size) and a.dtype == np.float32
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
    sitk.WriteImage(img * 0.99, str(reg / pid / "T1.nii.gz"))  # (x 1.01 would leave [0, 4095]: refused)
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


# ------------------------------------------------------------------------------------------------
# k-fold (split.folds >= 2, split.fold = i)


def _pids(n: int) -> list[str]:
    return [f"P{i + 1:03d}" for i in range(n)]


@pytest.mark.parametrize("n, k", [(23, 5), (8, 4), (80, 8), (5, 5)])
def test_kfold_partitions_the_patients(n, k):
    from vce.prep.split import kfold_partition

    pids = _pids(n)
    parts = kfold_partition(pids, k, seed=3)
    assert len(parts) == k
    flat = [p for part in parts for p in part]
    assert sorted(flat) == pids and len(set(flat)) == n  # a partition: every patient exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert kfold_partition(pids, k, seed=3) == parts  # same seed -> same folds
    assert kfold_partition(list(reversed(pids)), k, seed=3) == parts  # input order does not matter
    if n > k:
        assert kfold_partition(pids, k, seed=4) != parts


def test_each_fold_is_the_test_set_once():
    from vce.prep.split import kfold_partition

    pids, k = _pids(23), 5
    parts = kfold_partition(pids, k, seed=11)
    times_test = dict.fromkeys(pids, 0)
    for i in range(k):
        a = assign_split(pids, 0.125, seed=11, folds=k, fold=i)
        test = sorted(p for p, s in a.items() if s == "test")
        train = {p for p, s in a.items() if s == "train"}
        assert test == parts[i]
        assert train.isdisjoint(test) and train | set(test) == set(pids)
        for p in test:
            times_test[p] += 1
    assert set(times_test.values()) == {1}
    # folds off: the hold-out split is unchanged by the fold argument
    assert assign_split(pids, 0.125, seed=11, folds=0, fold=3) == assign_split(pids, 0.125, seed=11)


@pytest.mark.parametrize(
    "n, folds, fold, match",
    [(8, 1, 0, "folds"), (8, -2, 0, "folds"), (3, 4, 0, "too small"), (8, 4, 4, "fold"), (8, 4, -1, "fold")],
)
def test_bad_fold_settings(n, folds, fold, match):
    with pytest.raises(VCEInputError, match=match):
        assign_split(_pids(n), 0.125, seed=0, folds=folds, fold=fold)


def test_kfold_store_and_split_id(tmp_path, tiny_cfg, tiny_registered, tiny_split):
    """Fold settings reach the slice store and the split identity; folds never leak patients."""
    import dataclasses

    from vce import steps
    from vce.prep.split import kfold_partition

    pids = sorted(p.name for p in tiny_registered.iterdir() if p.is_dir())
    parts = kfold_partition(pids, 4, tiny_cfg.seed)
    ids = set()
    for i in (0, 1):
        cfg = dataclasses.replace(tiny_cfg, split=dataclasses.replace(tiny_cfg.split, folds=4, fold=i))
        out = tmp_path / f"fold{i}"
        m = steps.split(tiny_registered, out, cfg)
        assert sorted(m.loc[m.split == "test", "patient"]) == parts[i]
        idx = {s: pd.read_csv(out / s / "index.csv") for s in ("train", "test")}
        assert set(idx["train"].patient).isdisjoint(idx["test"].patient)
        info = json.loads((out / "split.json").read_text())
        assert info["folds"] == 4 and info["fold"] == i and info["patients"]["test"] == len(parts[i])
        ids.add(info["split_id"])
    ids.add(json.loads((tiny_split / "split.json").read_text())["split_id"])
    assert len(ids) == 3  # fold 0, fold 1 and the hold-out split all differ


def test_split_id_covers_settings():
    from vce.prep.split import split_identity

    base = {"seed": 1, "test_ratio": 0.125, "folds": 0, "fold": 0, "image_size": 32, "min_body_fraction": 0.05,
            "max_fov_missing": 0.01}
    man = b"patient,split,n_slices,sha256\nP001,train,3,ab\n"
    a = split_identity(base, man)
    assert a == split_identity(dict(reversed(list(base.items()))), man)  # key order irrelevant
    assert a != split_identity({**base, "folds": 4}, man)
    assert a != split_identity({**base, "fold": 1}, man)
    assert a != split_identity({**base, "max_fov_missing": 0.02}, man)
    assert a != split_identity(base, man.replace(b"ab", b"ac"))  # a changed input hash


def test_batch_reads_do_not_load_whole_arrays(tmp_path):
    """The store is memory-mapped: gathering a batch allocates about the batch, not the array."""
    import tracemalloc

    from vce.training.data import SliceDataset

    n, s = 400, 64
    d = tmp_path / "train"
    d.mkdir()
    for m in ("T1", "T2", "T1C"):
        a = np.lib.format.open_memmap(d / f"{m}.npy", mode="w+", dtype=np.float32, shape=(n, s, s))
        a[:] = np.arange(n, dtype=np.float32)[:, None, None]
        a.flush()
        del a
    ds = SliceDataset(tmp_path, "train")
    assert isinstance(ds._target, np.memmap)
    tracemalloc.start()
    x, y = ds.batch([3, 250])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole = n * s * s * 4
    assert peak < 0.1 * whole, (peak, whole)  # 2 of 400 slices x 3 arrays ~ 1.5 % of one array
    assert x.shape == (2, 2, s, s) and float(y[1, 0, 0, 0]) == 250.0


# ------------------------------------------------------------------------------------------------
# field-of-view completeness (split.max_fov_missing)


def _head(nz: int = 4, n: int = 20) -> np.ndarray:
    """(nz, n, n) T2-like volume: a bright disc of radius n/3 on a dark background."""
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    disc = (x**2 + y**2 <= (n / 3) ** 2).astype(np.float32)
    return np.broadcast_to(100.0 * disc + 1.0, (nz, n, n)).copy()


def test_kept_slices_rule():
    from vce.prep.slicing import body_mask, kept_slices

    t2 = _head()
    t1 = t2.copy()
    body = body_mask(t2)
    z, n = kept_slices({"T2": t2, "T1": t1}, 0.05, 0.01)
    assert z.tolist() == [0, 1, 2, 3] and n == 0
    ys, xs = np.nonzero(body[1])
    t1[1, ys[: len(ys) // 2], xs[: len(ys) // 2]] = 0.0  # half of slice 1's body outside T1's FOV
    t1[2, ys[0], xs[0]] = 0.0  # one pixel: below 1 % of the body
    z, n = kept_slices({"T2": t2, "T1": t1}, 0.05, 0.01)
    assert z.tolist() == [0, 2, 3] and n == 1
    assert kept_slices({"T2": t2, "T1": t1}, 0.05, 0.6)[0].tolist() == [0, 1, 2, 3]  # rule off
    t1[:, 0, 0] = 0.0  # zeros in the air do not count
    assert kept_slices({"T2": t2, "T1": t1}, 0.05, 0.01)[0].tolist() == [0, 2, 3]
    # a slice without enough body is left out by min_body_fraction, and not counted as a FOV exclusion
    t2[3] = 1.0
    z, n = kept_slices({"T2": t2, "T1": t1}, 0.05, 0.01)
    assert z.tolist() == [0, 2] and n == 1


def test_fov_incomplete_slice_is_left_out_and_counted(tmp_path, tiny_cfg, tiny_registered, tiny_split):
    """A patient whose T1 is zero on half of one slice's body loses exactly that slice; the others keep theirs."""
    import shutil

    import SimpleITK as sitk

    from vce import steps
    from vce.prep.slicing import body_mask

    geom = json.loads((tiny_split / "geometry.json").read_text())
    before = pd.read_csv(tiny_split / "manifest.csv", dtype={"patient": str}).set_index("patient")
    pid = before.index[0]
    z = geom[pid]["z"][len(geom[pid]["z"]) // 2]
    reg = tmp_path / "reg"
    shutil.copytree(tiny_registered, reg)
    img = sitk.ReadImage(str(reg / pid / "T1.nii.gz"))
    a = sitk.GetArrayFromImage(img)
    body = body_mask(sitk.GetArrayFromImage(sitk.ReadImage(str(reg / pid / "T2.nii.gz"))))[z]
    ys, xs = np.nonzero(body)
    a[z, ys[: len(ys) // 2], xs[: len(ys) // 2]] = 0.0
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(reg / pid / "T1.nii.gz"))

    after = steps.split(reg, tmp_path / "s", tiny_cfg).set_index("patient")
    assert list(after.reset_index().columns) == ["patient", "split", "n_slices", "n_slices_fov_excluded", "sha256"]
    assert after.loc[pid, "n_slices"] == before.loc[pid, "n_slices"] - 1
    assert after.loc[pid, "n_slices_fov_excluded"] == before.loc[pid, "n_slices_fov_excluded"] + 1
    geom2 = json.loads((tmp_path / "s" / "geometry.json").read_text())
    assert geom2[pid]["z"] == [k for k in geom[pid]["z"] if k != z]
    others = [p for p in before.index if p != pid]
    assert after.loc[others, ["n_slices", "n_slices_fov_excluded"]].equals(before.loc[others, ["n_slices", "n_slices_fov_excluded"]])
    assert all(geom2[p]["z"] == geom[p]["z"] for p in others)
    info = json.loads((tmp_path / "s" / "split.json").read_text())
    for s in ("train", "test"):
        assert info["slices_fov_excluded"][s] == int(after.loc[after.split == s, "n_slices_fov_excluded"].sum())
        assert info["slices"][s] == int(after.loc[after.split == s, "n_slices"].sum())
    assert info["max_fov_missing"] == tiny_cfg.split.max_fov_missing


def test_input_statistics_applies_the_same_rule(tiny_cfg, tiny_registered):
    """predict's statistics leave out the FOV-incomplete slices of the inputs it has (T1, T2)."""
    import SimpleITK as sitk

    from vce.inference import input_statistics
    from vce.io.errors import VCEInputError
    from vce.prep.normalization import patient_stats
    from vce.prep.slicing import body_mask, kept_slices

    pid = sorted(p.name for p in tiny_registered.iterdir() if p.is_dir())[0]
    vols = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_registered / pid / f"{m}.nii.gz"))) for m in ("T1", "T2")}
    sp = tiny_cfg.split
    z, _ = kept_slices(vols, sp.min_body_fraction, sp.max_fov_missing)
    k = int(z[len(z) // 2])
    body = body_mask(vols["T2"])[k]
    cut = {**vols, "T1": vols["T1"].copy()}
    cut["T1"][k][body] = 0.0
    got = input_statistics(cut, sp.image_size, sp.min_body_fraction, sp.max_fov_missing)
    keep = [int(j) for j in z if j != k]  # split + normalize would store these slices
    geom = SliceGeometry.for_shape(vols["T2"].shape[1:], sp.image_size)
    sq_body = to_square(body_mask(vols["T2"])[keep].astype(np.float32), geom, order=0) > 0.5
    for m in ("T1", "T2"):
        mu, sd = patient_stats(to_square(cut[m][keep], geom), sq_body)
        assert got[m] == {"mu": mu, "sd": sd}
    with pytest.raises(VCEInputError, match="field of view"):
        input_statistics({**vols, "T1": np.zeros_like(vols["T1"])}, sp.image_size, sp.min_body_fraction, sp.max_fov_missing)


def test_one_patient_under_two_ids_is_refused(tiny_registered, tiny_cfg, tmp_path):
    """A copy of a patient under another id would put the same images in train and test."""
    import shutil

    import pytest

    from vce.io.errors import VCEInputError
    from vce.prep.split import split_cohort

    reg = tmp_path / "registered"
    shutil.copytree(tiny_registered, reg)
    first = sorted(p.name for p in reg.iterdir() if p.is_dir())[0]
    shutil.copytree(reg / first, reg / "P999")
    with pytest.raises(VCEInputError, match=rf"patients {first} and P999 have identical T1, T2, T1C"):
        split_cohort(reg, tmp_path / "split", tiny_cfg.split, tiny_cfg.seed)
    assert not (tmp_path / "split").exists()


def _blank(reg: Path, pid: str, value: int = 100) -> None:
    """Make patient ``pid``'s registered T2 air but one voxel (a constant image is refused earlier):
    no slice has body content (``value`` differs between patients: identical scans are a duplicate)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(reg / pid / "T2.nii.gz"))
    a = np.zeros_like(sitk.GetArrayFromImage(img))
    a[0, 0, 0] = value
    out = sitk.GetImageFromArray(a)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(reg / pid / "T2.nii.gz"))


def test_a_patient_without_usable_slices_is_left_out_with_the_reason(tmp_path, tiny_cfg, tiny_registered, tiny_split, caplog):
    """One patient whose scans hold no body: left out of both splits (a warning naming it, its
    reason in split.json's ``excluded``); every other patient is split as before the slice rule
    saw it, by the same seeded assignment over the patients that remain."""
    import logging
    import shutil

    from vce import steps
    from vce.prep.split import assign_split

    before = pd.read_csv(tiny_split / "manifest.csv", dtype={"patient": str}).set_index("patient")
    reg = tmp_path / "reg"
    shutil.copytree(tiny_registered, reg)
    pid = before.index[0]
    _blank(reg, pid)
    with caplog.at_level(logging.WARNING, logger="vce.prep.split"):
        after = steps.split(reg, tmp_path / "s", tiny_cfg).set_index("patient")
    assert pid not in after.index and sorted(after.index) == sorted(p for p in before.index if p != pid)
    s = tiny_cfg.split
    assert after.split.to_dict() == assign_split(sorted(after.index), s.test_ratio, tiny_cfg.seed, s.folds, s.fold)
    assert after.n_slices.equals(before.loc[after.index, "n_slices"])
    info = json.loads((tmp_path / "s" / "split.json").read_text())
    assert info["excluded"] == {pid: "no slice with body content"}
    assert sum(info["patients"].values()) == len(before) - 1
    assert any(pid in r.getMessage() and "left out of the split" in r.getMessage() for r in caplog.records)
    assert "excluded" not in json.loads((tiny_split / "split.json").read_text())  # a split with none: no key


def test_too_few_patients_with_slices_is_an_error_naming_them(tmp_path, tiny_cfg, tiny_registered):
    """When the patients left are too few to split, the error names each one left out and why;
    nothing is written."""
    import shutil

    from vce import steps
    from vce.io.errors import VCEInputError

    reg = tmp_path / "reg"
    shutil.copytree(tiny_registered, reg)
    pids = sorted(p.name for p in reg.iterdir() if p.is_dir())
    for i, pid in enumerate(pids[1:]):
        _blank(reg, pid, value=100 + i)
    with pytest.raises(VCEInputError) as err:
        steps.split(reg, tmp_path / "s", tiny_cfg)
    msg = str(err.value)
    assert f"{len(pids) - 1} patient(s) without a usable slice" in msg
    assert all(f"{p}: no slice with body content" in msg for p in pids[1:]) and f"{pids[0]}:" not in msg
    assert not (tmp_path / "s").exists() and [p.name for p in tmp_path.iterdir()] == ["reg"]
