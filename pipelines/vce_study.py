"""The VCE study DAG: cohort -> register -> split -> normalize -> [train -> evaluate] x variants, reference -> compare.

Wiring only; every step is a component in ``components/``. The same definition runs on a
Kubeflow cluster (compiled ``vce_study.yaml``; training requests one GPU) and locally with kfp's
SubprocessRunner (``vce run``), where accelerator settings are ignored.

    python -m pipelines.vce_study            # recompile pipelines/vce_study.yaml
"""


import json
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.data import cohort_op, normalize_op, register_op, split_op
from components.evaluation import compare_op, evaluate_op, reference_op
from components.training import start_study_op, train_op, variants_op

ROOT = Path(__file__).resolve().parents[1]
COMPILED = Path(__file__).with_suffix(".yaml")
CLUSTER_PARALLELISM = 8
#: The cluster's MLflow server runs with basic auth (k8s/base/mlflow.yaml); the tasks that track
#: read their MLflow user from this Secret (keys below), which the manifests reference, never inline.
MLFLOW_SECRET = "mlflow-auth"
MLFLOW_SECRET_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


def _mlflow_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """On the cluster, ``task`` authenticates to MLflow with :data:`MLFLOW_SECRET` (optional: a
    cluster without auth runs too); ignored by the local runner."""
    return kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_SECRET_ENV, optional=True)


def default_arguments(params_path: Path = ROOT / "params.yaml") -> dict:
    """Pipeline defaults baked into the compiled YAML: the params file (as one-line JSON, which is
    YAML too: kfp copies defaults into the compiled file's header comment line by line) and its
    default profile. The variants are not a parameter: ``variants_op`` reads them from the text."""
    import yaml

    raw = yaml.safe_load(params_path.read_text())
    return {"params_yaml": json.dumps(raw), "profile": raw.get("profile", "demo")}


def build_pipeline(parallelism: int = CLUSTER_PARALLELISM, defaults: dict | None = None):
    """The ``@dsl.pipeline`` function; ``parallelism`` caps concurrent trainings."""
    d = defaults or default_arguments()

    @dsl.pipeline(name="vce-study", description="PGMGVCE virtual contrast enhancement study with ablations and MMgSN-Net baseline")
    def vce_study(
        params_yaml: str = d["params_yaml"],
        profile: str = d["profile"],
        source_dir: str = "",
        tracking_uri: str = "",
        experiment: str = "vce-study",
    ) -> dsl.Dataset:
        cohort = cohort_op(source_dir=source_dir, params_yaml=params_yaml, profile=profile).set_display_name("cohort")
        registered = register_op(cohort=cohort.outputs["cohort"], params_yaml=params_yaml, profile=profile)
        registered.set_display_name("register").set_cpu_limit("4").set_memory_limit("8G")
        split = split_op(registered=registered.outputs["registered"], params_yaml=params_yaml, profile=profile)
        split.set_display_name("slice-and-split")
        normalized = normalize_op(split=split.outputs["split"], params_yaml=params_yaml, profile=profile)
        normalized.set_display_name("normalize")
        reference = reference_op(
            registered=registered.outputs["registered"], split=split.outputs["split"],
            normalized=normalized.outputs["normalized"], params_yaml=params_yaml, profile=profile,
        )
        reference.set_display_name("reference-rows").set_memory_limit("8G")
        study = start_study_op(tracking_uri=tracking_uri, experiment=experiment, params_yaml=params_yaml, profile=profile)
        _mlflow_credentials(study.set_display_name("start-study").set_caching_options(False))
        variants = variants_op(params_yaml=params_yaml, profile=profile)
        variants.set_display_name("variants").set_caching_options(False)
        with dsl.ParallelFor(variants.output, parallelism=parallelism, name="ablations") as variant:
            train = train_op(
                normalized=normalized.outputs["normalized"], variant=variant, params_yaml=params_yaml,
                profile=profile, tracking_uri=tracking_uri, experiment=experiment, study=study.outputs["study"],
            )
            train.set_display_name("train").set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
            _mlflow_credentials(train.set_memory_limit("16G").set_caching_options(False))
            evaluation = evaluate_op(
                model=train.outputs["model"], registered=registered.outputs["registered"],
                split=split.outputs["split"], normalized=normalized.outputs["normalized"],
                params_yaml=params_yaml, profile=profile, tracking_uri=tracking_uri,
            )
            _mlflow_credentials(evaluation.set_display_name("evaluate").set_caching_options(False))
        report = compare_op(
            evaluations=dsl.Collected(evaluation.outputs["evaluation"]), params_yaml=params_yaml, profile=profile,
            tracking_uri=tracking_uri, study=study.outputs["study"], reference=reference.outputs["reference"],
        )
        _mlflow_credentials(report.set_display_name("compare-to-baseline").set_caching_options(False))
        return report.outputs["report"]

    return vce_study


def compile_pipeline(path: Path = COMPILED) -> Path:
    compiler.Compiler().compile(build_pipeline(), package_path=str(path))
    return path


if __name__ == "__main__":
    print(compile_pipeline())
