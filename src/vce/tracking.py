"""Experiment tracking. The only module that imports mlflow.

Library code logs through the small :class:`Tracker` protocol, so steps run (and are tested)
with or without MLflow: pass ``None`` or :class:`NullTracker` to log nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """A tracker that records nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


# --------------------------------------------------------------------------- MLflow
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "vce-study"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``mlflow/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow' / 'mlflow.db'}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go to ``artifacts/`` beside the database file."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def _retry(fn: Callable[[], Any], what: str, attempts: int = 8) -> Any:
    """Run ``fn``, retrying on SQLite's 'database is locked' (parallel writers)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
            logger.debug("retrying %s after: %s", what, exc)
    raise AssertionError("unreachable")


def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def get_or_create_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    client = _client(tracking_uri)

    def go() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=default_artifact_root(tracking_uri))
        except Exception:
            exp = client.get_experiment_by_name(name)  # created concurrently
            if exp is None:
                raise
            return exp.experiment_id

    return _retry(go, "create experiment")


class MlflowTracker:
    """A :class:`Tracker` writing to one MLflow run (by id), safe with parallel SQLite writers."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = _client(tracking_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)) for k, v in params.items()]
        for i in range(0, len(flat), 100):
            _retry(lambda: self.client.log_batch(self.run_id, params=flat[i : i + 100]), "log params")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        _retry(lambda: self.client.log_batch(self.run_id, metrics=ms), "log metrics")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), "log artifact")

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            _retry(lambda: self.client.set_tag(self.run_id, k, v), "set tag")

    def finish(self, status: str = "FINISHED") -> None:
        _retry(lambda: self.client.set_terminated(self.run_id, status), "terminate run")


def start_run(
    tracking_uri: str, run_name: str, experiment: str = DEFAULT_EXPERIMENT, parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> MlflowTracker:
    """Create a run (a child of ``parent_run_id`` when given) and return its tracker."""
    exp_id = get_or_create_experiment(tracking_uri, experiment)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    client = _client(tracking_uri)
    run = _retry(lambda: client.create_run(exp_id, run_name=run_name, tags=all_tags), "create run")
    logger.info("MLflow run %s (%s) in experiment %s at %s", run.info.run_id, run_name, experiment, tracking_uri)
    return MlflowTracker(tracking_uri, run.info.run_id)


def study_runs(tracking_uri: str, parent_run_id: str) -> list[Any]:
    """The child runs of a study's parent run."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
