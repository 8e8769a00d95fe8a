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
from vce.training import LOSS_COLUMNS

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
    assert ckpt["model"] == {"name": "pgmgvce", "n_modalities": 2, "base_channels": 4, "output": "sigmoid",
                             "arch": {"depth": TINY.pgmgvce_depth}}
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


# --------------------------------------------------------------------------- resume, validation, options


def _write_store(root: Path, n_train: int = 5, n_test: int = 1, per: int = 4, s: int = 32) -> Path:
    """A normalised store like the normalize step's: ``root/sigmoid/{train,test}`` with index.csv
    (``per`` slices per patient; patient ids P00.. train, then test)."""
    import pandas as pd

    for split, pids in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        pids = list(pids)
        d = _write_split(root / "sigmoid" / "_tmp", n=per * len(pids), s=s, seed=len(split)) / "train"
        dst = root / "sigmoid" / split
        d.rename(dst)
        (root / "sigmoid" / "_tmp").rmdir()
        pd.DataFrame({"patient": [f"P{p:02d}" for p in pids for _ in range(per)],
                      "z": [z for _ in pids for z in range(per)]}).to_csv(dst / "index.csv", index=False)
    return root


def _params_file(tmp: Path, **train: object) -> Path:
    """A copy of params.yaml whose tiny profile has ``train`` overrides."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["profiles"]["tiny"]["train"].update(train)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


RESUME_TRAIN = dict(iterations=32, checkpoint_every=8, log_every=5, val_patients=1, val_every=8, ema_decay=0.9,
                    gp_type="wgan_gp", gp_weight=0.1)


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, tiny_cfg) -> None:
    """Real kill: SIGKILL `vce train` after its first resumable state, rerun with --resume, and
    compare with an uninterrupted run (generator/discriminator tensors, loss and validation rows)."""
    import dataclasses
    import os
    import signal
    import subprocess
    import sys
    import time

    store = _write_store(tmp_path / "normalized")
    params = _params_file(tmp_path, **RESUME_TRAIN)
    cfg = dataclasses.replace(tiny_cfg.train, **RESUME_TRAIN)
    variant = tiny_cfg.variant("pgmgvce_main")
    ref = train_variant(store / "sigmoid", tmp_path / "ref", variant, cfg, tiny_cfg.seed)

    out = tmp_path / "run"
    state = tmp_path / "run.partial" / "last.pt"
    vce = Path(sys.executable).parent / "vce"
    cmd = [str(vce), "train", "--variant", "pgmgvce_main", "--normalized", str(store), "--out", str(out),
           "--no-tracking", "--params", str(params), "--profile", "tiny", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert still_running, "training finished before it could be killed"
    assert not out.exists()
    st = torch.load(state, weights_only=True)
    assert 8 <= st["iteration"] < 32 and st["iteration"] % 8 == 0

    subprocess.run([*cmd, "--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert not state.parent.exists()  # state removed after success
    a = torch.load(ref / "checkpoint.pt", weights_only=True)
    b = torch.load(out / "checkpoint.pt", weights_only=True)
    for part in ("generator", "discriminator"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert (ref / "losses.csv").read_text() == (out / "losses.csv").read_text()
    assert (ref / "validation.csv").read_text() == (out / "validation.csv").read_text()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == st["iteration"]
    assert sorted(p.name for p in (out / "validation").iterdir()) == [f"it_{i:06d}.png" for i in (8, 16, 24, 32)]


def test_stale_state_without_resume_is_deleted(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    cfg = TrainConfig(iterations=6, batch_size=2, base_channels=4, log_every=2, threads=1, checkpoint_every=2)
    ref = train_variant(norm, tmp_path / "ref", MAIN, cfg, seed=4)
    stale = tmp_path / "run.partial"
    stale.mkdir()
    (stale / "last.pt").write_bytes(b"not a checkpoint")
    out = train_variant(norm, tmp_path / "run", MAIN, cfg, seed=4)  # no resume: ignored and deleted
    assert not stale.exists()
    ga = torch.load(ref / "checkpoint.pt", weights_only=True)["generator"]
    gb = torch.load(out / "checkpoint.pt", weights_only=True)["generator"]
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    # resuming from a state of a different configuration is refused
    killed = TrainConfig(iterations=6, batch_size=2, base_channels=4, log_every=2, threads=1, checkpoint_every=2)
    with pytest.raises(FloatingPointError):  # a stop hook: abort after the first state is written
        _train_and_abort(norm, tmp_path / "x", killed, seed=4, after=3)
    assert (tmp_path / "x.partial" / "last.pt").is_file()
    with pytest.raises(VCEInputError, match="seed"):
        train_variant(norm, tmp_path / "x", MAIN, killed, seed=5, resume=True)


def _train_and_abort(norm: Path, out: Path, cfg: TrainConfig, seed: int, after: int) -> None:
    """Run train_variant but make the loss non-finite at iteration ``after`` (an in-loop crash)."""
    import vce.losses as tr  # the generator objective's LSGAN term

    orig = tr.lsgan_g_loss
    calls = {"n": 0}

    def boom(d):  # noqa: ANN001, ANN202
        calls["n"] += 1
        v = orig(d)
        return v * float("nan") if calls["n"] >= after else v

    tr.lsgan_g_loss = boom
    try:
        train_variant(norm, out, MAIN, cfg, seed=seed)
    finally:
        tr.lsgan_g_loss = orig


def test_validation_holdout_best_checkpoint_and_ema(tmp_path: Path, tiny_cfg) -> None:
    import dataclasses

    import pandas as pd

    cfg = dataclasses.replace(tiny_cfg.train, iterations=6, val_patients=1, val_every=3, keep="best", ema_decay=0.5)
    tracker = RecordingTracker()
    norm = _write_store(tmp_path / "normalized") / "sigmoid"
    out = train_variant(norm, tmp_path / "run", tiny_cfg.variant("pgmgvce_main"), cfg, tiny_cfg.seed, tracker=tracker)
    summary = json.loads((out / "train_summary.json").read_text())
    train_idx = pd.read_csv(norm / "train" / "index.csv")
    test_pids = set(pd.read_csv(norm / "test" / "index.csv").patient.astype(str))
    (val_pid,) = summary["val_patients"]
    assert val_pid in set(train_idx.patient.astype(str)) and val_pid not in test_pids
    n_val = int((train_idx.patient.astype(str) == val_pid).sum())
    assert summary["n_val_slices"] == n_val and summary["n_train_slices"] == len(train_idx) - n_val

    with open(out / "validation.csv") as fh:
        vrows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in vrows] == [3, 6]
    assert all(0 < float(r["val_norm_mae"]) < 1 and -1 <= float(r["val_norm_ssim"]) <= 1 for r in vrows)
    best_it = int(min(vrows, key=lambda r: float(r["val_norm_mae"]))["iteration"])
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert ck["selected"] == "best" and ck["selected_iteration"] == best_it and ck["generator_is_ema"]
    assert last["selected"] == "last" and last["selected_iteration"] == 6
    assert summary["best"]["iteration"] == best_it
    load_generator(out / "checkpoint.pt")
    assert ("it_000003.png", "validation") in tracker.artifacts and ("it_000006.png", "validation") in tracker.artifacts
    assert [s for m, s in tracker.metrics if "val_norm_mae" in m] == [3, 6]
    # the saved generator is the EMA: recomputing the validation MAE with it reproduces the logged value
    g, _ = load_generator(out / "last.pt")
    from vce.training.data import holdout_patients

    _, val_rows, _ = holdout_patients(norm, "train", 1, tiny_cfg.seed)
    vx, vy = SliceDataset(norm, "train", ("T1", "T2"), rows=val_rows).batch(np.arange(len(val_rows)))
    with torch.no_grad():
        mae = (g(vx) - vy).abs().mean(dim=(1, 2, 3)).mean().item()
    assert mae == pytest.approx(float(vrows[-1]["val_norm_mae"]), rel=1e-4)


def test_holdout_needs_index_and_keep_best_needs_validation(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")  # no index.csv
    with pytest.raises(VCEInputError, match=r"index\.csv"):
        train_variant(norm, tmp_path / "run", MAIN, TrainConfig(iterations=2, batch_size=2, base_channels=4,
                                                                val_patients=1), seed=1)
    with pytest.raises(ValueError, match="keep: best"):
        train_variant(norm, tmp_path / "run", MAIN, TrainConfig(keep="best"), seed=1)
    with pytest.raises(ValueError, match="gp_type"):
        train_variant(norm, tmp_path / "run", MAIN, TrainConfig(gp_type="wgan"), seed=1)


@pytest.mark.parametrize("opts", [{"gp_type": "wgan_gp", "gp_weight": 10.0}, {"amp": "bf16"}, {"amp": "fp16"}])
def test_options_train(tmp_path: Path, opts: dict, caplog) -> None:
    norm = _write_split(tmp_path / "norm")
    cfg = TrainConfig(iterations=2, batch_size=2, base_channels=4, log_every=1, threads=1, **opts)
    out = train_variant(norm, tmp_path / "run", MAIN, cfg, seed=1, device="cpu")
    rows = _losses(out)
    assert all(np.isfinite(float(r[k])) for r in rows for k in LOSS_COLUMNS)
    summary = json.loads((out / "train_summary.json").read_text())
    if opts.get("amp") == "fp16":  # fp16 needs CUDA: falls back to fp32 with a warning
        assert summary["amp"] == "off" and "fp16 needs CUDA" in caplog.text
    else:
        assert summary["amp"] == opts.get("amp", "off")
    if "gp_type" in opts:
        assert all(float(r["gp"]) > 0 for r in rows)
    g = torch.load(out / "checkpoint.pt", weights_only=True)["generator"]
    assert all(v.dtype == torch.float32 for v in g.values() if v.is_floating_point())


@pytest.mark.slow
def test_compile_runs(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    cfg = TrainConfig(iterations=2, batch_size=2, base_channels=4, log_every=1, threads=1, compile=True)
    out = train_variant(norm, tmp_path / "run", MAIN, cfg, seed=1, device="cpu")
    g, _ = load_generator(out / "checkpoint.pt")  # plain (uncompiled) state-dict keys
    assert all(np.isfinite(float(r["loss_g"])) for r in _losses(out))


def test_gan_health_detector() -> None:
    from vce.training import gan_health

    healthy_d = [0.25, 0.24, 0.26, 0.25] * 5
    improving = [0.30, 0.25, 0.21, 0.18, 0.16, 0.15, 0.14]
    assert gan_health(healthy_d, improving, window=10, d_collapse_loss=0.02, patience=3) == {}
    collapsed = healthy_d + [0.01] * 10
    found = gan_health(collapsed, improving, window=10, d_collapse_loss=0.02, patience=3)
    assert set(found) == {"d_collapse"}
    # a short collapse inside a longer window is not flagged
    assert "d_collapse" not in gan_health(healthy_d + [0.0] * 3, improving, window=10, d_collapse_loss=0.02, patience=3)
    # fewer rows than the window: no verdict
    assert gan_health([0.0] * 5, [], window=10, d_collapse_loss=0.02, patience=3) == {}
    stalled = [0.30, 0.20, 0.15, 0.16, 0.15, 0.17]  # best 0.15 at the 3rd, never beaten in the last 3
    found = gan_health(healthy_d, stalled, window=10, d_collapse_loss=0.02, patience=3, g_name="val_norm_mae")
    assert set(found) == {"g_stalled"} and "val_norm_mae" in found["g_stalled"]
    assert "g_stalled" not in gan_health(healthy_d, stalled + [0.149], window=10, d_collapse_loss=0.02, patience=3)
    assert gan_health(healthy_d, stalled[:3], window=10, d_collapse_loss=0.02, patience=3) == {}  # too short


def test_health_warning_reaches_tracker(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")

    class TagTracker(RecordingTracker):
        tags: dict = {}

        def set_tags(self, tags):
            self.tags.update(tags)

    tracker = TagTracker()
    # threshold above any LSGAN loss_d: "collapse" is flagged as soon as the window is full
    cfg = TrainConfig(iterations=4, batch_size=2, base_channels=4, log_every=1, threads=1, health_window=2,
                      d_collapse_loss=100.0)
    out = train_variant(norm, tmp_path / "run", MAIN, cfg, seed=1, tracker=tracker)
    assert ({"health_d_collapse": 1.0}, 2) in tracker.metrics
    assert "vce.health.d_collapse" in tracker.tags
    assert json.loads((out / "train_summary.json").read_text())["health_warnings"][0] == "d_collapse"


# --------------------------------------------------------------------------- a bad resumable state, image size, object arrays


class _Payload:
    """A pickle payload: loading it with full unpickling would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def _resume_cli(tmp_path: Path, state_bytes: bytes, capsys) -> tuple[int, str, Path, Path]:
    from vce.cli import main

    store = _write_store(tmp_path / "normalized")
    params = _params_file(tmp_path, checkpoint_every=2)
    out = tmp_path / "run"
    state = tmp_path / "run.partial" / "last.pt"
    state.parent.mkdir()
    state.write_bytes(state_bytes)
    rc = main(["train", "--variant", "pgmgvce_main", "--normalized", str(store), "--out", str(out), "--no-tracking",
               "--params", str(params), "--profile", "tiny", "--device", "cpu", "--resume"])
    return rc, capsys.readouterr().err, out, state


REMEDY = "; delete it (rm {state}) to start from scratch, or run without --resume (which deletes it and starts from scratch)"


@pytest.mark.parametrize("how", ["torch_save", "pickle_protocol_2"])
def test_resume_refuses_a_malicious_state_without_running_it(tmp_path: Path, capsys, how: str) -> None:
    import io
    import pickle

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    payload = {"format_version": 1, "iteration": 2, "generator": _Payload(marker)}
    if how == "torch_save":
        torch.save(payload, buf)
    else:
        pickle.dump(payload, buf, protocol=2)
    rc, err, out, state = _resume_cli(tmp_path, buf.getvalue(), capsys)
    assert not marker.exists()  # nothing in the file was run
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"vce train: error: {state}: refused: it holds Python objects other than tensors and plain values, which a "
        "resumable training state never does (not loaded, nothing in it was run)" + REMEDY.format(state=state))
    assert "weights_only=False" not in err  # torch's advice to unpickle anyway is not passed on
    assert not out.exists() and state.exists()


def test_resume_refuses_a_truncated_state_naming_it(tmp_path: Path, capsys) -> None:
    import io

    buf = io.BytesIO()
    torch.save({"format_version": 1, "iteration": 2, "generator": {"w": torch.zeros(4096)}}, buf)
    rc, err, out, state = _resume_cli(tmp_path, buf.getvalue()[: len(buf.getvalue()) // 2], capsys)
    assert rc == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"vce train: error: {state}: not a loadable resumable training state (truncated, corrupt "
                           "or not a torch file: ")
    assert line.endswith(REMEDY.format(state=state))
    assert not out.exists()


def test_image_size_the_config_accepts_trains_and_one_it_refuses_does_not(tmp_path: Path) -> None:
    """split.image_size 40 passes load_config (a multiple of 4 for two halvings) and trains one
    iteration of both generators; 30 is refused at load, and the generators themselves refuse it."""
    import dataclasses

    from vce.config import ConfigError, load_config_text

    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    head, tiny = text.split("  tiny:\n")
    with pytest.raises(ConfigError, match=r"split\.image_size must be a multiple of 4 and at least 8 \(got 30\)"):
        load_config_text(head + "  tiny:\n" + tiny.replace("image_size: 48 ", "image_size: 30 "), "tiny")
    cfg = load_config_text(head + "  tiny:\n" + tiny.replace("image_size: 48 ", "image_size: 40 "), "tiny")
    train = dataclasses.replace(cfg.train, iterations=1, log_every=1)
    for name in ("pgmgvce_main", "baseline_mmgsn"):
        norm = _write_split(tmp_path / f"norm{cfg.split.image_size}", n=4, s=cfg.split.image_size)
        out = train_variant(norm, tmp_path / name, cfg.variant(name), train, seed=1)
        assert torch.load(out / "checkpoint.pt", weights_only=True)["iterations"] == 1
        small = _write_split(tmp_path / "norm30", n=4, s=30)
        with pytest.raises(ValueError, match="multiples of 4"):
            train_variant(small, tmp_path / f"{name}30", cfg.variant(name), train, seed=1)


def test_object_array_in_the_store_is_refused_by_name(tmp_path: Path) -> None:
    norm = _write_split(tmp_path / "norm")
    bad = norm / "train" / "T2.npy"
    np.save(bad, np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(VCEInputError) as info:
        train_variant(norm, tmp_path / "run", MAIN, TINY, seed=1)
    assert str(info.value) == (f"{bad}: holds an object array (pickled Python objects, dtype object), not numbers; "
                               "it is not loaded (a pickle can run code); rewrite it with the step that makes it")
    assert not (tmp_path / "run").exists()
