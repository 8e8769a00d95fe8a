"""The VCE study DAG: cohort -> register -> split -> normalize -> [train -> evaluate] x variants, reference -> compare.

Wiring only; every step is a component in ``components/``. The same definition runs on a
Kubeflow cluster (compiled ``vce_study.yaml``) and locally with kfp's SubprocessRunner
(``vce run``), which ignores the Kubernetes settings below with a warning:

- training requests ``gpus_per_training`` GPUs (:data:`GPU_RESOURCE`) and runs under
  ``torchrun --nproc_per_node`` that many when > 1; it is placed by the ``gpu_node_selector`` and
  ``gpu_tolerations`` parameters; no other task asks for a GPU or tolerates the GPU taint;
- the tasks that read patients (``fingerprint``, ``cohort``) mount the PVC ``data_pvc`` at
  :data:`DATA_MOUNT`, so ``source_dir`` can point into a user's volume;
- the tasks that talk to MLflow read its credentials (:data:`MLFLOW_SECRET`) and the object
  store's (:data:`OBJECT_STORE_SECRET`) from Kubernetes Secrets as environment variables;
- every task has a deadline (:data:`TIMEOUTS_S`); the tracking and I/O tasks are retried with
  back-off (:data:`RETRY`), the deterministic science steps are not;
- the cohort snapshot is cached on the cohort's content digest (an uncached ``fingerprint``
  task), not only on its path;
- an exit handler closes the study's MLflow runs with the pipeline's final status;
- every task runs as the image's user (:data:`components.IMAGE_UID`), non-root; the data PVC must
  be readable by it.

Compile-time settings: the image (``$VCE_IMAGE``, see ``components/__init__.py``) and the GPU
resource name (a pipeline parameter there is dropped from the ParallelFor's inputs by kfp 2.17's
compiler, measured, so it is fixed here).

    python -m pipelines.vce_study            # recompile pipelines/vce_study.yaml
"""


import json
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import IMAGE_UID
from components.data import cohort_op, fingerprint_op, normalize_op, register_op, split_op
from components.evaluation import compare_op, evaluate_op, reference_op
from components.training import close_study_op, start_study_op, train_op, variants_op

ROOT = Path(__file__).resolve().parents[1]
COMPILED = Path(__file__).with_suffix(".yaml")
CLUSTER_PARALLELISM = 8
#: The in-cluster MLflow service of ``k8s/`` (namespace ``vce``): the default of a cluster run.
CLUSTER_TRACKING_URI = "http://mlflow.vce.svc:5000"
#: The cluster's MLflow server runs with basic auth (k8s/base/mlflow.yaml); the tasks that track
#: read their MLflow user from this Secret (keys below), which the manifests reference, never inline.
MLFLOW_SECRET = "mlflow-auth"
MLFLOW_SECRET_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
#: The S3-compatible artifact store's credentials and endpoint (MLflow's and boto3's variables).
OBJECT_STORE_SECRET = "vce-object-store"
OBJECT_STORE_SECRET_ENV = {"access-key-id": "AWS_ACCESS_KEY_ID", "secret-access-key": "AWS_SECRET_ACCESS_KEY",
                           "endpoint-url": "MLFLOW_S3_ENDPOINT_URL"}
GPU_RESOURCE = "nvidia.com/gpu"
#: Defaults of the placement parameters: the label NVIDIA's GPU feature discovery puts on GPU
#: nodes, and the taint GPU node pools commonly carry (GKE, AKS, the GPU operator's docs).
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
SHM_SIZE = "8Gi"
DATA_PVC = "vce-data"
DATA_MOUNT = "/mnt/vce-data"
#: Deadline of each task's pod (activeDeadlineSeconds), by display name.
TIMEOUTS_S = {"fingerprint": 3600, "cohort": 7200, "register": 6 * 3600, "slice-and-split": 7200, "normalize": 7200,
              "reference-rows": 4 * 3600, "start-study": 900, "variants": 600, "train": 48 * 3600, "evaluate": 4 * 3600,
              "compare-to-baseline": 7200, "close-study": 900}
#: Retries of the tasks whose failures are mostly transient (MLflow or the object store away, a
#: volume hiccup): 30 s, then 60 s. Not for register/split/normalize/reference/train: their
#: failures repeat (bad input, divergence, out of memory) and a retried training would redo hours
#: of GPU time and open a second MLflow run.
RETRY = {"num_retries": 2, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}
RETRIED = ("cohort", "start-study", "evaluate", "compare-to-baseline", "close-study")


def _mlflow_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """On the cluster, ``task`` authenticates to MLflow with :data:`MLFLOW_SECRET` and to the
    object store with :data:`OBJECT_STORE_SECRET` (both optional: a cluster without auth or with
    proxied artifacts runs too); ignored by the local runner."""
    kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=MLFLOW_SECRET_ENV, optional=True)
    return kubernetes.use_secret_as_env(task, secret_name=OBJECT_STORE_SECRET,
                                        secret_key_to_env=OBJECT_STORE_SECRET_ENV, optional=True)


def _task(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Display name, deadline (:data:`TIMEOUTS_S`), the image's non-root user (:data:`IMAGE_UID`)
    and, for :data:`RETRIED`, retries with back-off."""
    task.set_display_name(name)
    kubernetes.set_timeout(task, TIMEOUTS_S[name])
    # the KFP backend adds allowPrivilegeEscalation=false, drops ALL capabilities, seccomp RuntimeDefault
    kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)
    if name in RETRIED:
        task.set_retry(**RETRY)
    return task


def _on_gpus(task: dsl.PipelineTask, gpus, node_selector, tolerations, accelerator: str) -> dsl.PipelineTask:
    """``gpus`` of ``accelerator`` for ``task``, on the nodes ``node_selector`` picks, tolerating
    ``tolerations``; a memory-backed ``/dev/shm`` (:data:`SHM_SIZE`) for torchrun's processes
    (NCCL and the data loaders share memory through it; a pod's default is 64 MB)."""
    task.set_accelerator_type(accelerator).set_accelerator_limit(gpus)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE)
    kubernetes.add_node_selector_json(task, node_selector)
    return kubernetes.add_toleration_json(task, tolerations)


def _reads_patients(task: dsl.PipelineTask, pvc) -> dsl.PipelineTask:
    """Mount the data PVC ``pvc`` at :data:`DATA_MOUNT` (where ``source_dir`` points on a cluster)."""
    return kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=DATA_MOUNT)


def default_arguments(params_path: Path = ROOT / "params.yaml") -> dict:
    """Pipeline defaults baked into the compiled YAML: the params file (as one-line JSON, which is
    YAML too: kfp copies defaults into the compiled file's header comment line by line) and its
    default profile. The variants are not a parameter: ``variants_op`` reads them from the text."""
    from vce.config import load_yaml  # YAML 1.2 scalars, as load_config: DVC's rewrite `amp: off` stays "off"

    raw = load_yaml(params_path.read_text())
    return {"params_yaml": json.dumps(raw), "profile": raw.get("profile", "demo")}


def build_pipeline(parallelism: int = CLUSTER_PARALLELISM, defaults: dict | None = None,
                   accelerator: str = GPU_RESOURCE):
    """The ``@dsl.pipeline`` function; ``parallelism`` caps concurrent trainings, ``accelerator``
    is the GPU resource name the trainings request."""
    d = defaults or default_arguments()

    @dsl.pipeline(name="vce-study", description="PGMGVCE virtual contrast enhancement study with ablations and MMgSN-Net baseline")
    def vce_study(
        params_yaml: str = d["params_yaml"],
        profile: str = d["profile"],
        source_dir: str = "",
        tracking_uri: str = CLUSTER_TRACKING_URI,
        experiment: str = "vce-study",
        data_pvc: str = DATA_PVC,
        gpus_per_training: int = 1,
        gpu_node_selector: dict = GPU_NODE_SELECTOR,
        gpu_tolerations: list = GPU_TOLERATIONS,
    ):
        close = close_study_op(tracking_uri=tracking_uri, experiment=experiment,
                               pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        _mlflow_credentials(_task(close, "close-study").set_caching_options(False))
        with dsl.ExitHandler(close, name="study"):
            data = _data_steps(params_yaml, profile, source_dir, data_pvc)
            study = start_study_op(tracking_uri=tracking_uri, experiment=experiment, params_yaml=params_yaml,
                                   profile=profile, pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                   cohort=data["cohort"], split=data["split"])
            _mlflow_credentials(_task(study, "start-study").set_caching_options(False))
            variants = _task(variants_op(params_yaml=params_yaml, profile=profile), "variants").set_caching_options(False)
            with dsl.ParallelFor(variants.output, parallelism=parallelism, name="ablations") as variant:
                train = train_op(
                    normalized=data["normalized"], variant=variant, params_yaml=params_yaml, profile=profile,
                    tracking_uri=tracking_uri, experiment=experiment, study=study.outputs["study"], gpus=gpus_per_training,
                )
                _on_gpus(_task(train, "train"), gpus_per_training, gpu_node_selector, gpu_tolerations, accelerator)
                _mlflow_credentials(train.set_memory_limit("16G").set_caching_options(False))
                evaluation = evaluate_op(
                    model=train.outputs["model"], registered=data["registered"], split=data["split"],
                    normalized=data["normalized"], params_yaml=params_yaml, profile=profile, tracking_uri=tracking_uri,
                )
                _mlflow_credentials(_task(evaluation, "evaluate").set_caching_options(False))
            report = compare_op(
                evaluations=dsl.Collected(evaluation.outputs["evaluation"]), params_yaml=params_yaml, profile=profile,
                tracking_uri=tracking_uri, study=study.outputs["study"], reference=data["reference"],
            )
            _mlflow_credentials(_task(report, "compare-to-baseline").set_caching_options(False))

    return vce_study


def _data_steps(params_yaml, profile, source_dir, data_pvc) -> dict:
    """fingerprint -> cohort -> register -> split -> normalize, and the reference rows: their
    artifacts by name. Cached on the cluster (the cohort on its content digest), never retried but
    for the cohort's copy into the artifact store."""
    fingerprint = fingerprint_op(source_dir=source_dir)
    _reads_patients(_task(fingerprint, "fingerprint").set_caching_options(False), data_pvc)
    cohort = cohort_op(source_dir=source_dir, data_digest=fingerprint.output, params_yaml=params_yaml, profile=profile)
    _reads_patients(_task(cohort, "cohort"), data_pvc)
    registered = register_op(cohort=cohort.outputs["cohort"], params_yaml=params_yaml, profile=profile)
    _task(registered, "register").set_cpu_limit("4").set_memory_limit("8G")
    split = _task(split_op(registered=registered.outputs["registered"], params_yaml=params_yaml, profile=profile), "slice-and-split")
    normalized = _task(normalize_op(split=split.outputs["split"], params_yaml=params_yaml, profile=profile), "normalize")
    reference = reference_op(
        registered=registered.outputs["registered"], split=split.outputs["split"],
        normalized=normalized.outputs["normalized"], params_yaml=params_yaml, profile=profile,
    )
    _task(reference, "reference-rows").set_memory_limit("8G")
    return {"cohort": cohort.outputs["cohort"], "registered": registered.outputs["registered"], "split": split.outputs["split"],
            "normalized": normalized.outputs["normalized"], "reference": reference.outputs["reference"]}


def compile_pipeline(path: Path = COMPILED) -> Path:
    """Compile the pipeline to ``path`` (byte-identical on every compile: :func:`_stable_header`)."""
    compiler.Compiler().compile(build_pipeline(), package_path=str(path))
    path.write_text(_stable_header(path.read_text()))
    return path


def _stable_header(text: str) -> str:
    """kfp's header comment lists dict defaults (the tolerations) in protobuf map order, which
    changes from process to process; rewrite those ``[Default: ...]`` values with sorted keys."""
    import ast
    import re

    def ordered(v):
        if isinstance(v, dict):
            return {k: ordered(v[k]) for k in sorted(v)}
        return [ordered(x) for x in v] if isinstance(v, list) else v

    lines = text.splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))  # the header's end
    for i in range(n):
        m = re.match(r"(#    \w+: (?:dict|list) \[Default: )(.*)(\]\n)$", lines[i])
        if m:
            lines[i] = f"{m[1]}{ordered(ast.literal_eval(m[2]))!r}{m[3]}"
    return "".join(lines)


if __name__ == "__main__":
    print(compile_pipeline())
