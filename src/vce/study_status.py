"""The study's MLflow parent run closed with the pipeline's final status (the DAG's exit handler).

On a cluster no ``vce run`` process outlives the DAG to close what a failed or cancelled run left
open, so the pipeline's exit handler does it: :func:`close_study` finds the study's parent run by
the pipeline job id (tagged by :func:`tag_pipeline_job` when ``start-study`` opens it; an exit task
cannot take another task's output) and terminates it, and its child runs still RUNNING (a
training whose pod was killed), with the MLflow status of the pipeline's state. Uses
:mod:`vce.tracking`'s client; nothing here imports mlflow itself.
"""

from __future__ import annotations

import logging
from typing import Any

from .tracking import DEFAULT_EXPERIMENT, MlflowTracker, _client, _retry, preflight, study_runs

logger = logging.getLogger(__name__)

#: Tag of the study's parent run naming the pipeline job (``{{$.pipeline_job_uuid}}``) that opened it.
JOB_TAG = "vce.kfp.job_id"
STATE_TAG = "vce.pipeline_state"
ERROR_TAG = "vce.pipeline_error"
#: KFP's final task states (``dsl.PipelineTaskFinalStatus.state``) -> MLflow run status.
MLFLOW_STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELED": "KILLED", "CANCELLED": "KILLED",
                 "CANCELING": "KILLED", "SKIPPED": "KILLED"}


def mlflow_status(state: str) -> str:
    """The MLflow status for a KFP final state (anything unknown counts as FAILED)."""
    return MLFLOW_STATUS.get(str(state).upper(), "FAILED")


def tag_pipeline_job(tracking_uri: str, run_id: str, job_id: str) -> None:
    """Tag the study's parent run ``run_id`` with the pipeline job that opened it (:data:`JOB_TAG`)."""
    if tracking_uri and run_id and job_id:
        MlflowTracker(tracking_uri, run_id).set_tags({JOB_TAG: job_id})


def study_of_job(tracking_uri: str, job_id: str, experiment: str = DEFAULT_EXPERIMENT) -> list[Any]:
    """The parent run(s) of ``experiment`` tagged with pipeline job ``job_id`` (none when the
    experiment does not exist yet)."""
    client = _client(tracking_uri)
    exp = _retry(lambda: client.get_experiment_by_name(experiment), "get experiment")
    if exp is None:
        return []
    return _retry(lambda: client.search_runs([exp.experiment_id], f"tags.`{JOB_TAG}` = '{job_id}'"), "search runs")


def close_study(tracking_uri: str, job_id: str, state: str, error: str = "",
                experiment: str = DEFAULT_EXPERIMENT) -> int:
    """Close pipeline job ``job_id``'s study: its parent run and the child runs still RUNNING get
    :func:`mlflow_status` of ``state`` (a parent already closed keeps its status); the parent is
    tagged with the state (:data:`STATE_TAG`) and the error. Returns how many runs were closed;
    0 when tracking is off or no study run was opened (``start-study`` failed first)."""
    if not (tracking_uri and job_id):
        logger.info("tracking off or no pipeline job id: no study run to close")
        return 0
    preflight(tracking_uri)
    parents = study_of_job(tracking_uri, job_id, experiment)
    if not parents:
        logger.warning("no study run of pipeline job %s in experiment %r at %s: nothing to close", job_id, experiment,
                       tracking_uri)
        return 0
    status = mlflow_status(state)
    closed: list[str] = []
    for parent in parents:
        tracker = MlflowTracker(tracking_uri, parent.info.run_id)
        tracker.set_tags({STATE_TAG: str(state), **({ERROR_TAG: error[:5000]} if error else {})})
        runs = [*_retry(lambda: study_runs(tracking_uri, parent.info.run_id), "search runs"), parent]
        for r in runs:
            if r.info.status == "RUNNING":
                MlflowTracker(tracking_uri, r.info.run_id).finish(status)
                closed.append(r.info.run_name or r.info.run_id)
    if closed:
        logger.warning("marked %d MLflow run(s) of this study %s: %s", len(closed), status, ", ".join(sorted(closed)))
    logger.info("study of pipeline job %s: pipeline %s, MLflow status %s", job_id, state, status)
    return len(closed)
