"""Evaluation components: score each variant, then compare them in the paper's tables."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from . import VCE_IMAGE


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def evaluate_op(
    model: Input[Model],
    registered: Input[Dataset],
    split: Input[Dataset],
    normalized: Input[Dataset],
    params_yaml: str,
    profile: str,
    tracking_uri: str,
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
):
    """Predictions (NIfTI) and per-slice / per-patient metrics for the test patients; logged to
    the variant's MLflow run in ``tracking_uri`` (the pipeline's, never one named in the
    checkpoint; '' = tracking off)."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    import json

    from vce import steps
    from vce.config import load_config_text

    from vce.evaluation.run import logged_metrics

    steps.evaluate(model.path, registered.path, split.path, normalized.path, evaluation.path,
                   load_config_text(params_yaml, profile), track=bool(tracking_uri), tracking_uri=tracking_uri or None)
    summary = json.load(open(f"{evaluation.path}/summary.json"))["mean_over_patients"]
    for k, v in logged_metrics(summary).items():  # the same names as the MLflow run and metrics.json
        metrics.log_metric(k, float(v))


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def reference_op(
    registered: Input[Dataset],
    split: Input[Dataset],
    normalized: Input[Dataset],
    params_yaml: str,
    profile: str,
    reference: Output[Dataset],
):
    """The reference rows of every table: the oracle (resampling ceiling) and the learnability regressor."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    import json

    from vce import steps
    from vce.config import load_config_text

    steps.reference(registered.path, split.path, normalized.path, reference.path, load_config_text(params_yaml, profile))
    for r in ("oracle", "learnability"):
        summary = json.load(open(f"{reference.path}/{r}/summary.json"))["mean_over_patients"]
        for k in ("mae_body", "ssim_body", "enh_ratio_ring"):
            if summary.get(k) == summary.get(k):  # not NaN
                reference.metadata[f"{r}.{k}"] = float(summary[k])


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def compare_op(
    evaluations: Input[List[Dataset]],
    params_yaml: str,
    profile: str,
    tracking_uri: str,
    study: Input[Artifact],
    reference: Input[Dataset],
    report: Output[Dataset],
):
    """The paper's tables, the protocol tables, verdicts, metrics.json and report.html; logged to the study's parent run."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    import json

    from vce import steps
    from vce.config import load_config_text

    parent = json.load(open(study.path))["run_id"]
    steps.compare([e.path for e in evaluations], report.path, load_config_text(params_yaml, profile),
                  tracking_uri=tracking_uri or None, parent_run_id=parent or None, reference=reference.path)
