"""Training components: the study's parent MLflow run and one training run per variant."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from . import VCE_IMAGE


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def start_study_op(tracking_uri: str, experiment: str, params_yaml: str, profile: str) -> str:
    """Open the study's parent MLflow run; returns its id ('' when tracking is off)."""
    from vce import steps
    from vce.config import load_config_text

    if not tracking_uri:
        return ""
    return steps.start_study(tracking_uri, load_config_text(params_yaml, profile), experiment=experiment)


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def train_op(
    normalized: Input[Dataset],
    variant: str,
    params_yaml: str,
    profile: str,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    model: Output[Model],
):
    """Train one variant (a child MLflow run of the study)."""
    import json

    from vce import steps
    from vce.config import load_config_text

    cfg = load_config_text(params_yaml, profile)
    steps.train(normalized.path, model.path, cfg, variant, tracking_uri=tracking_uri or None,
                parent_run_id=parent_run_id or None, experiment=experiment)
    model.metadata.update({"variant": json.loads(variant)["name"], "framework": "pytorch"})
