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
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
):
    """Predictions (NIfTI) and per-slice / per-patient metrics for the test patients."""
    import json

    from vce import steps
    from vce.config import load_config_text

    steps.evaluate(model.path, registered.path, split.path, normalized.path, evaluation.path,
                   load_config_text(params_yaml, profile))
    summary = json.load(open(f"{evaluation.path}/summary.json"))["mean_over_patients"]
    for k in ("mae", "mse", "ssim", "tmsvpmi", "tavpmi", "tfpmi", "vfpmi"):
        metrics.log_metric(k, float(summary[k]))


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def compare_op(
    evaluations: Input[List[Dataset]],
    params_yaml: str,
    profile: str,
    tracking_uri: str,
    study: Input[Artifact],
    report: Output[Dataset],
):
    """Table 1, Table 2 and the three ablation tables; logged to the study's parent run."""
    import json

    from vce import steps
    from vce.config import load_config_text

    parent = json.load(open(study.path))["run_id"]
    steps.compare([e.path for e in evaluations], report.path, load_config_text(params_yaml, profile),
                  tracking_uri=tracking_uri or None, parent_run_id=parent or None)
