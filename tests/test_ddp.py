"""Data-parallel training: 2 CPU processes (gloo) under torchrun via `vce train --nproc 2`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from vce.training import SeededBatchSampler
from vce.training.distributed import state_hash as _state_hash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import _params_file, _write_store  # noqa: E402


def test_sampler_shards_are_disjoint_parts_of_the_global_batch() -> None:
    single = SeededBatchSampler(10, 6, seed=3)
    r0, r1 = SeededBatchSampler(10, 3, seed=3, rank=0, world_size=2), SeededBatchSampler(10, 3, seed=3, rank=1, world_size=2)
    for _ in range(7):
        a, b, whole = r0.next_batch(), r1.next_batch(), single.next_batch()
        assert np.array_equal(np.concatenate([a, b]), whole)
    # state round trip through plain types
    s = SeededBatchSampler(10, 3, seed=3)
    s.next_batch()
    t = SeededBatchSampler(10, 3, seed=99)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert all(np.array_equal(s.next_batch(), t.next_batch()) for _ in range(5))


def test_two_process_gloo_training(tmp_path: Path) -> None:
    norm = _write_store(tmp_path / "normalized")
    params = _params_file(tmp_path, iterations=6, log_every=2, val_patients=1, val_every=3)
    out = tmp_path / "runs" / "ddp"
    vce = Path(sys.executable).parent / "vce"
    res = subprocess.run(
        [str(vce), "train", "--variant", "pgmgvce_main", "--normalized", str(norm), "--out", str(out), "--no-tracking",
         "--params", str(params), "--profile", "tiny", "--device", "cpu", "--nproc", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["ddp"]  # written once, no temp/state leftovers
    assert res.stdout.count(f"wrote {out}") == 1  # only rank 0 reports
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    h0, h1 = summary["generator_sha256_per_rank"]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert h0 == h1 == _state_hash(ck["generator"])  # both ranks ended with identical weights
    assert (out / "validation.csv").read_text().count("\n") == 3  # header + 2 validations, rank 0 only
    rows = (out / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "4", "6"]
