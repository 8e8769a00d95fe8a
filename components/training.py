"""Training components: the study's variants, its parent MLflow run and one training run per variant."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from . import VCE_IMAGE


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def variants_op(params_yaml: str, profile: str) -> list:
    """The study's variants as JSON objects (``Variant.to_json``), read from the same params text
    as every other step: the pipeline's ParallelFor loops over this output, so its items cannot
    disagree with ``params_yaml``. The loop items are the output itself (not a task-output
    parameter consumed inside the loop, which kfp 2.17's local runner mis-resolves)."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    from vce.config import load_config_text

    return [v.to_json() for v in load_config_text(params_yaml, profile).variants]


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def start_study_op(tracking_uri: str, experiment: str, params_yaml: str, profile: str, pipeline_job_id: str,
                   cohort: Input[Dataset], split: Input[Dataset], study: Output[Artifact]):
    """Open the study's parent MLflow run; ``study`` holds its id ('' when tracking is off). The
    run is tagged with ``pipeline_job_id`` (``vce.study_status``), by which the exit handler
    (``close_study_op``) finds it, and with the lineage of the ``cohort`` snapshot and the
    ``split`` (``vce.lineage``: DVC md5s, ``split_id``, the manifest as an input dataset), which
    the variants' child runs inherit.

    The id travels as an artifact, not a parameter: kfp's local runner (2.17) mis-resolves a
    task-output parameter consumed inside a ParallelFor (it receives the loop item instead).
    """
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    import json

    from vce import steps
    from vce.config import load_config_text
    from vce.study_status import tag_pipeline_job

    from pathlib import Path

    from vce.lineage import Sources

    # a user's folder: its DVC md5, computed by the cohort step (the folder may hold more than the
    # patients the snapshot copies); a synthesised cohort: the snapshot's own, computed here
    user_md5 = cohort.metadata.get("dvc_md5")
    sources = Sources(raw=None if user_md5 else Path(cohort.path), split=Path(split.path))
    tags = {"vce.data.path": cohort.metadata.get("source_dir") or "synthesised by the cohort step"}
    if user_md5:
        tags["vce.data.md5"] = user_md5
    run_id = steps.start_study(tracking_uri, load_config_text(params_yaml, profile), experiment=experiment,
                               lineage_sources=sources, tags=tags) if tracking_uri else ""
    tag_pipeline_job(tracking_uri, run_id, pipeline_job_id)
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
    gpus: int = 1,
):
    """Train one variant (``variant``: one item of ``variants_op``; a child MLflow run of the study).

    ``gpus`` > 1 (the task's accelerator limit on the cluster): data-parallel training, one
    process per GPU under ``torchrun --nproc_per_node gpus`` through ``vce train --nproc``
    (the CLI's launcher; the params text goes to a temporary file for it)."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    import json

    from vce import steps
    from vce.config import Variant, load_config_text

    cfg = load_config_text(params_yaml, profile)
    v = Variant.from_json(variant)
    parent = json.load(open(study.path))["run_id"]
    if gpus > 1:
        import tempfile

        from vce.cli import main

        track = (["--tracking-uri", tracking_uri, "--experiment", experiment, *(["--parent-run-id", parent] if parent else [])]
                 if tracking_uri else ["--no-tracking"])
        with tempfile.TemporaryDirectory(prefix="vce-params-") as tmp:
            with open(f"{tmp}/params.yaml", "w") as f:
                f.write(params_yaml)
            rc = main(["train", "--variant-json", variant, "--normalized", normalized.path, "--out", model.path,
                       "--params", f"{tmp}/params.yaml", "--profile", profile, "--nproc", str(gpus), *track])
        if rc != 0:
            raise RuntimeError(f"vce train --nproc {gpus} (torchrun) exited with status {rc}")
    else:
        steps.train(normalized.path, model.path, cfg, v, tracking_uri=tracking_uri or None,
                    parent_run_id=parent or None, experiment=experiment)
    model.metadata.update({"variant": v.name, "framework": "pytorch", "gpus": gpus})


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def close_study_op(tracking_uri: str, experiment: str, pipeline_job_id: str, status: dsl.PipelineTaskFinalStatus):
    """The DAG's exit handler: close the study's MLflow parent run (and the child runs a failed
    pipeline left RUNNING) with the pipeline's final state (``vce.study_status.close_study``)."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    from vce.study_status import close_study

    close_study(tracking_uri, pipeline_job_id, status.state, error=status.error_message or "", experiment=experiment)
