"""The loss history of a run: window-averaged rows of ``losses.csv`` and their CSV writer."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LossLog", "write_rows"]


class LossLog:
    """Logged rows ``{"iteration": it, column: mean since the previous row}``.

    A row is logged at iteration 1, every ``log_every`` iterations and at the last one; each is
    the mean of the step values since the previous row (the running window is part of the
    resumable state, so a resumed run logs the same rows).
    """

    def __init__(self, columns: Sequence[str], log_every: int, iterations: int) -> None:
        self.columns, self.log_every, self.iterations = tuple(columns), log_every, iterations
        self.rows: list[dict[str, float]] = []
        self.window = {k: 0.0 for k in self.columns}
        self.n_window = 0

    def add(self, iteration: int, values: dict[str, float]) -> dict[str, float] | None:
        """Add one step's values; returns the new row when ``iteration`` is a logging one."""
        for k, v in values.items():
            self.window[k] += v
        self.n_window += 1
        if not (iteration == 1 or iteration % self.log_every == 0 or iteration == self.iterations):
            return None
        row = {"iteration": iteration} | {k: self.window[k] / self.n_window for k in self.columns}
        self.rows.append(row)
        self.window = {k: 0.0 for k in self.columns}
        self.n_window = 0
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "window": self.window, "n_window": self.n_window}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.window, self.n_window = state["rows"], state["window"], state["n_window"]


def write_rows(path: Path, rows: list[dict[str, float]], columns: Sequence[str]) -> None:
    """CSV ``iteration, *columns`` with one line per row, floats as ``repr`` (round-trip exact)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", *columns])
        for row in rows:
            writer.writerow([row["iteration"], *(repr(float(row[k])) for k in columns)])
