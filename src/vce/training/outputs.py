"""A finished run's directory, written atomically (complete or absent), and what the tracker gets.

    checkpoint.pt        the kept weights (``train.keep``: last | best), see vce.models.checkpoint
    best.pt / last.pt    the other one (best.pt only with validation)
    losses.csv           window-averaged losses (vce.training.history)
    validation.csv       with validation on; validation/it_XXXXXX.png its montages
    montage.png          the final generator on fixed training slices
    train_summary.json   settings, sizes, timings, final losses, health warnings, hashes
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vce.io.atomic import atomic_dir
from vce.models.checkpoint import save_checkpoint
from vce.tracking import Tracker
from vce.training.history import write_rows
from vce.training.monitor import VAL_COLUMNS
from vce.training.step import LOSS_COLUMNS

__all__ = ["checkpoint_files", "write_run_dir", "track_outputs"]


def checkpoint_files(keep: str, last: dict[str, Any], best: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """File name -> checkpoint: ``checkpoint.pt`` is the kept one (``keep``), the other beside it."""
    if keep == "best":
        if best is None:
            raise ValueError("keep: best needs validation (no best checkpoint)")
        return {"checkpoint.pt": best, "last.pt": last}
    return {"checkpoint.pt": last} | ({"best.pt": best} if best is not None else {})


def write_run_dir(
    out_dir: Path,
    *,
    checkpoints: dict[str, dict[str, Any]],
    loss_rows: list[dict[str, float]],
    val_rows: list[dict[str, float]],
    validation_pngs: Path,
    montage: Callable[[Path], None],
    summary: dict[str, Any],
) -> Path:
    """Write the run directory ``out_dir`` in one atomic rename; ``montage(path)`` draws montage.png."""
    with atomic_dir(out_dir) as tmp:
        for name, ckpt in checkpoints.items():
            save_checkpoint(ckpt, tmp / name)
        write_rows(tmp / "losses.csv", loss_rows, LOSS_COLUMNS)
        if val_rows:
            write_rows(tmp / "validation.csv", val_rows, VAL_COLUMNS)
            if validation_pngs.is_dir():
                shutil.copytree(validation_pngs, tmp / "validation")
        montage(tmp / "montage.png")
        (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return out_dir


def track_outputs(tracker: Tracker | None, out_dir: Path, summary: dict[str, Any]) -> None:
    """Speed metrics and the run's files to the tracker (the checkpoint under ``model/``)."""
    if tracker is None:
        return
    wall = summary["wall_time_s"]
    tracker.log_metrics({"iterations_per_s": summary["iterations_per_s"] or 0.0, "wall_time_s": wall},
                        step=summary["iterations"])  # fmt: skip
    tracker.log_artifact(out_dir / "montage.png")
    tracker.log_artifact(out_dir / "checkpoint.pt", artifact_path="model")
    tracker.log_artifact(out_dir / "losses.csv")
    if (out_dir / "validation.csv").is_file():
        tracker.log_artifact(out_dir / "validation.csv")
