"""Training components: the study's parent MLflow run and one training run per variant."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from . import VCE_IMAGE


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def start_study_op(tracking_uri: str, experiment: str, params_yaml: str, profile: str, study: Output[Artifact]):
    """Open the study's parent MLflow run; ``study`` holds its id ('' when tracking is off).

    The id travels as an artifact, not a parameter: kfp's local runner (2.17) mis-resolves a
    task-output parameter consumed inside a ParallelFor (it receives the loop item instead).
    """
    import json

    from vce import steps
    from vce.config import load_config_text

    run_id = steps.start_study(tracking_uri, load_config_text(params_yaml, profile), experiment=experiment) if tracking_uri else ""
    with open(study.path, "w") as f:
        json.dump({"run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment}, f)
    study.metadata["mlflow_run_id"] = run_id


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def train_op(
    normalized: Input[Dataset],
    variant: str,
    params_yaml: str,
    profile: str,
    tracking_uri: str,
    experiment: str,
    study: Input[Artifact],
    model: Output[Model],
):
    """Train one variant (a child MLflow run of the study)."""
    import json

    from vce import steps
    from vce.config import load_config_text

    cfg = load_config_text(params_yaml, profile)
    parent = json.load(open(study.path))["run_id"]
    steps.train(normalized.path, model.path, cfg, variant, tracking_uri=tracking_uri or None,
                parent_run_id=parent or None, experiment=experiment)
    model.metadata.update({"variant": json.loads(variant)["name"], "framework": "pytorch"})
