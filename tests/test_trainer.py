"""Trainer: outputs, checkpoint format, determinism, input validation, learning on a trivial task."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vce.config import TrainConfig, Variant
from vce.io.errors import VCEInputError
from vce.models import load_generator
from vce.training import SeededBatchSampler, SliceDataset, train_variant
from vce.training.trainer import LOSS_COLUMNS

TINY = TrainConfig(iterations=4, batch_size=2, base_channels=4, log_every=2, threads=1)
MAIN = Variant("pgmgvce_main")


class RecordingTracker:
    def __init__(self) -> None:
        self.params: dict = {}
        self.metrics: list[tuple[dict, int | None]] = []
        self.artifacts: list[tuple[str, str | None]] = []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_artifact(self, path, artifact_path=None):
        assert Path(path).is_file()
        self.artifacts.append((Path(path).name, artifact_path))


def _write_split(root: Path, n: int = 12, s: int = 32, seed: int = 0, target: str = "mix") -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s] / s
    t1 = np.stack([np.sin(6 * xx + k) * np.cos(4 * yy + 0.3 * k) for k in range(n)])
    t2 = np.stack([np.cos(5 * xx * yy + 0.5 * k) for k in range(n)])
    t1 = (t1 + 0.05 * rng.standard_normal(t1.shape)).astype(np.float32)
    t2 = (t2 + 0.05 * rng.standard_normal(t2.shape)).astype(np.float32)
    t1c = t1.copy() if target == "t1" else (0.6 * t1 + 0.4 * t2).astype(np.float32)
    d = root / "train"
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "T1.npy", t1)
    np.save(d / "T2.npy", t2)
    np.save(d / "T1C.npy", t1c)
    return root


def _losses(path: Path) -> list[dict[str, str]]:
    with open(path / "losses.csv") as fh:
        return list(csv.DictReader(fh))


def test_outputs_checkpoint_and_tracker(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    tracker = RecordingTracker()
    md = {"image_size": 32, "register": {"shrink_factors": (2, 1)}, "calibration": None, "profile": "tiny"}
    out = train_variant(norm, tmp_path / "run", MAIN, TINY, seed=3, tracker=tracker, metadata=md)
    assert out == tmp_path / "run"
    for name in ("checkpoint.pt", "losses.csv", "montage.png", "train_summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no temp dirs left

    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["variant"] == MAIN.to_dict()
    assert ckpt["model"] == {"name": "pgmgvce", "n_modalities": 2, "base_channels": 4, "output": "sigmoid"}
    assert ckpt["iterations"] == 4 and ckpt["seed"] == 3
    assert all(isinstance(v, torch.Tensor) for v in ckpt["generator"].values())
    assert all(isinstance(v, torch.Tensor) for v in ckpt["discriminator"].values())

    g, meta = load_generator(out / "checkpoint.pt")
    assert meta["variant"]["name"] == "pgmgvce_main" and not g.training
    assert meta["metadata"] == {"image_size": 32, "register": {"shrink_factors": [2, 1]}, "calibration": None, "profile": "tiny"}
    with torch.no_grad():
        assert g(torch.zeros(1, 2, 32, 32)).shape == (1, 1, 32, 32)

    rows = _losses(out)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 4]
    assert list(rows[0]) == ["iteration", *LOSS_COLUMNS]
    assert all(np.isfinite(float(r[k])) for r in rows for k in LOSS_COLUMNS)

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["iterations"] == 4 and summary["params"]["generator"] > 0
    assert summary["iterations_per_s"] > 0 and set(summary["final_losses"]) == set(LOSS_COLUMNS)
    assert set(summary["modality_weights"]) == {"T1", "T2"}

    assert tracker.params["name"] == "pgmgvce_main" and tracker.params["batch_size"] == 2
    assert tracker.params["params_generator"] == summary["params"]["generator"]
    logged = [(m, s) for m, s in tracker.metrics if "loss_d" in m]
    assert [s for _, s in logged] == [1, 2, 4] and set(logged[0][0]) == set(LOSS_COLUMNS)
    assert ("montage.png", None) in tracker.artifacts and ("checkpoint.pt", "model") in tracker.artifacts
    assert ("losses.csv", None) in tracker.artifacts


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    cfg = TrainConfig(iterations=3, batch_size=2, base_channels=4, log_every=1, threads=1)
    a = train_variant(norm, tmp_path / "a", MAIN, cfg, seed=5)
    b = train_variant(norm, tmp_path / "b", MAIN, cfg, seed=5)
    c = train_variant(norm, tmp_path / "c", MAIN, cfg, seed=6)
    assert (a / "losses.csv").read_text() == (b / "losses.csv").read_text()
    assert (a / "losses.csv").read_text() != (c / "losses.csv").read_text()
    ga = torch.load(a / "checkpoint.pt", weights_only=True)["generator"]
    gb = torch.load(b / "checkpoint.pt", weights_only=True)["generator"]
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def test_caller_rng_and_threads_untouched(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_variant(norm, tmp_path / "run", MAIN, TrainConfig(iterations=1, batch_size=2, base_channels=4, threads=1), seed=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("missing", ["T1C.npy", "T2.npy"])
def test_missing_file_names_it(tmp_path: Path, missing: str) -> None:
    norm = _write_split(tmp_path / "norm")
    (norm / "train" / missing).unlink()
    with pytest.raises(VCEInputError, match=missing.replace(".", r"\.")):
        train_variant(norm, tmp_path / "run", MAIN, TINY, seed=1)
    assert not (tmp_path / "run").exists()


def test_t2_not_needed_for_t1_only(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    (norm / "train" / "T2.npy").unlink()
    out = train_variant(norm, tmp_path / "run", Variant("t1_only", modalities=("T1",)), TINY, seed=1)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["model"]["n_modalities"] == 1 and ckpt["variant"]["modalities"] == ["T1"]


def test_mismatched_shapes_and_bad_arrays(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    np.save(norm / "train" / "T2.npy", np.zeros((11, 32, 32), np.float32))
    with pytest.raises(VCEInputError, match=r"T2\.npy"):
        train_variant(norm, tmp_path / "run", MAIN, TINY, seed=1)
    np.save(norm / "train" / "T2.npy", np.zeros((12, 32), np.float32))
    with pytest.raises(VCEInputError, match=r"T2\.npy"):
        SliceDataset(norm, "train", ("T1", "T2"))
    (norm / "train" / "T1.npy").write_bytes(b"garbage")
    with pytest.raises(VCEInputError, match=r"T1\.npy"):
        SliceDataset(norm, "train", ("T1",))
    with pytest.raises(VCEInputError, match="test"):
        SliceDataset(norm, "test", ("T1",))


def test_dataset_and_sampler(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm", n=5)
    ds = SliceDataset(norm, "train", ["T2", "T1"])  # canonical order T1, T2
    assert ds.modalities == ("T1", "T2") and len(ds) == 5 and ds.image_size == 32
    x, y = ds[3]
    assert x.shape == (2, 32, 32) and y.shape == (1, 32, 32) and x.dtype == torch.float32
    assert np.array_equal(x[0].numpy(), np.load(norm / "train" / "T1.npy")[3])
    s1, s2 = SeededBatchSampler(5, 3, seed=9), SeededBatchSampler(5, 3, seed=9)
    batches = [s1.next_batch() for _ in range(5)]
    assert all(np.array_equal(a, s2.next_batch()) for a in batches)
    flat = np.concatenate(batches)
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))  # epochs
    assert SeededBatchSampler(2, 4, seed=0).next_batch().shape == (4,)  # fewer slices than a batch


def test_single_modality_pgmgvce(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    out = train_variant(norm, tmp_path / "run", Variant("t2_only", modalities=("T2",)), TINY, seed=2)
    g, meta = load_generator(out / "checkpoint.pt")
    assert meta["model"]["n_modalities"] == 1
    assert torch.allclose(g.modality_weights(), torch.ones(1))


def test_baseline_mmgsn_with_l1(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    v = Variant("baseline_mmgsn", model="mmgsn", lambda_pg=0.0, lambda_gan=1.0, lambda_l1=100.0)
    out = train_variant(norm, tmp_path / "run", v, TINY, seed=2)
    rows = _losses(out)
    for r in rows:  # loss_g = 1 * gan + 100 * l1 (pg only monitored), averaged over the same window
        assert float(r["loss_g"]) == pytest.approx(float(r["loss_gan"]) + 100 * float(r["loss_l1"]), rel=1e-4)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["model"]["name"] == "mmgsn"


def test_l1_training_learns_identity_mapping(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm", n=8, s=32, target="t1")
    # z-score targets are unbounded (here in [-1, 1]), so the generator output is linear
    v = Variant("l1_only", model="pgmgvce", lambda_pg=0.0, lambda_gan=0.0, lambda_l1=1.0, modalities=("T1",),
                normalization="zscore")
    cfg = TrainConfig(iterations=30, batch_size=4, base_channels=4, log_every=10, lr=2e-3, threads=1)
    out = train_variant(norm, tmp_path / "run", v, cfg, seed=0)
    rows = _losses(out)
    first, last = float(rows[0]["loss_l1"]), float(rows[-1]["loss_l1"])
    assert last < 0.6 * first, (first, last)


def test_invalid_settings(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    with pytest.raises(ValueError, match="iterations"):
        train_variant(norm, tmp_path / "run", MAIN, TrainConfig(iterations=0), seed=1)
    with pytest.raises(ValueError, match="nothing to train"):
        train_variant(norm, tmp_path / "run", Variant("z", lambda_pg=0, lambda_gan=0, lambda_l1=0), TINY, seed=1)
