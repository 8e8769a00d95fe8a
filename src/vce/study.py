"""``vce run``: the whole study through the Kubeflow pipeline with kfp's local runner.

No cluster and no Docker: kfp's SubprocessRunner runs each component in this Python
environment. Tracking goes to MLflow (default: the project's SQLite store). With
``runner="docker"`` kfp's DockerRunner runs each component in the project image instead
(:func:`docker_runner`; Docker or podman's Docker-compatible API at ``$DOCKER_HOST``;
docs/container.md).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from .config import Config, default_params_path
from .io.atomic import atomic_dir
from .io.errors import VCEEnvironmentError

logger = logging.getLogger(__name__)

#: ``vce run --runner``: the kfp local runners a study can use.
RUNNERS = ("subprocess", "docker")


def run_study(
    cfg: Config,
    data: str | Path = "data",
    out: str | Path = "outputs/study",
    tracking_uri: str | None = None,
    experiment: str | None = None,
    parallelism: int | None = None,
    params_path: str | Path | None = None,
    runner: str = "subprocess",
) -> Path:
    """Run the study DAG locally; returns the report directory (``<out>/report``).

    ``runner``: ``subprocess`` (each component a process in this environment) or ``docker``
    (each component a container of the project image: :func:`docker_runner`).

    One study per ``out`` at a time (an exclusive lock on ``<out>/.vce-run.lock``); an
    ``http(s)`` tracking server is checked first (:func:`vce.tracking.preflight`). This process
    owns the components it starts (:func:`vce.runtime.owning`: they die with it and tag their
    MLflow runs with it); when the DAG fails, the runs it left RUNNING are closed FAILED (KILLED
    on an interrupt), and the next study marks those of a killed run KILLED."""
    from .runtime import exclusive_run
    from .tracking import preflight

    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    t0 = time.time()
    data, out = Path(data).resolve(), Path(out).resolve()
    preflight(tracking_uri)
    with exclusive_run(out):
        report = _run_locked(cfg, data, out, tracking_uri, experiment, parallelism, params_path, runner)
    _print_summary(report, out / "kfp", tracking_uri, time.time() - t0)
    return report


def _run_locked(cfg: Config, data: Path, out: Path, tracking_uri: str | None, experiment: str | None,
                parallelism: int | None, params_path: str | Path | None, runner: str = "subprocess") -> Path:
    """:func:`run_study` once ``out`` is locked: the cohort, then the DAG as this process's own."""
    from kfp import local
    from pipelines.vce_study import build_pipeline, default_arguments

    from . import steps
    from .podman_compat import docker_runner_compat
    from .runtime import owning
    from .tracking import DEFAULT_EXPERIMENT, get_or_create_experiment

    params_path = Path(params_path) if params_path else default_params_path()
    if not (data.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in data.iterdir())):
        logger.info("no cohort at %s: synthesising the %s cohort (%d patients)", data, cfg.profile, cfg.synth.n_patients)
        steps.synth(data, cfg)
    else:
        check_synthetic_cohort(data, cfg)
    defaults = default_arguments(params_path)
    experiment = experiment or DEFAULT_EXPERIMENT
    if tracking_uri:  # the store's schema made here, once, before any component or viewer opens it
        get_or_create_experiment(tracking_uri, experiment)
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    kfp_runner = docker_runner(data, root, tracking_uri) if runner == "docker" else local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True)
    pipeline = build_pipeline(parallelism=parallelism or cfg.study.parallelism, defaults=defaults)
    logger.info("running the study DAG (%d variants, profile %s) with the kfp local %s runner; artifacts under %s",
                len(cfg.variants), cfg.profile, runner, root)
    before = {d.name for d in root.iterdir()}
    compat = docker_runner_compat() if runner == "docker" else contextlib.nullcontext()
    with owning() as me, compat:
        try:
            pipeline(
                params_yaml=defaults["params_yaml"], profile=cfg.profile, source_dir=str(data),
                tracking_uri=tracking_uri or "", experiment=experiment,
            )
        except BaseException as exc:
            _close_runs(tracking_uri, me.token, experiment, "FAILED" if isinstance(exc, Exception) else "KILLED")
            raise
    report = out / "report"
    with atomic_dir(report) as tmp:
        shutil.copytree(report_of_run(root, before), tmp, dirs_exist_ok=True)
    return report


def docker_runner(data: Path, root: Path, tracking_uri: str | None, image: str | None = None):
    """kfp's local DockerRunner for this study: every component runs in ``image`` (default: the
    one the components name, ``components.VCE_IMAGE``), which must exist locally (nothing is
    pulled at run time), through the Docker API at ``$DOCKER_HOST`` (Docker, or podman's
    ``podman system service``).

    kfp mounts the pipeline root at its own path; the tasks' arguments name host paths, so the
    cohort (read-only) and a SQLite tracking store's folder (read-write) are mounted at their
    own paths too. Containers use the host network (an ``http://127.0.0.1`` MLflow server is
    reachable). They run as the invoking user (files stay yours, as ``docker run -u``); when
    that is root, as the image's own non-root user, who is given the folders it writes."""
    from docker.types import Mount
    from kfp import local

    import components

    image = image or components.VCE_IMAGE
    store = sqlite_store_dir(tracking_uri)
    mounts = [Mount(str(data), str(data), type="bind", read_only=True)]
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(str(store), str(store), type="bind"))
    user = container_user(image, [p for p in (root, store) if p is not None])
    _remove_stale_containers()
    logger.info("DockerRunner: image %s as user %s, mounts %s (ro), %s + pipeline root %s (rw)",
                image, user, data, store or "-", root)
    return local.DockerRunner(network_mode="host", mounts=mounts, user=user)


def _remove_stale_containers() -> None:
    """The exited task containers a killed study left (:func:`vce.podman_compat.remove_stale_task_containers`)."""
    import docker

    from .podman_compat import remove_stale_task_containers

    client = docker.from_env()
    try:
        remove_stale_task_containers(client)
    finally:
        client.close()


def sqlite_store_dir(tracking_uri: str | None) -> Path | None:
    """The folder of a ``sqlite:///`` tracking store (its database and ``artifacts/``), else None."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):]).resolve().parent


def container_user(image: str, writable: list[Path]) -> str:
    """``uid:gid`` the study's containers run as: this process's, unless it is root; then the
    image's configured (non-root) user, and ``writable`` (recursively) is handed to it."""
    import os

    if os.geteuid() != 0:
        return f"{os.geteuid()}:{os.getegid()}"
    import docker

    client = docker.from_env()
    try:
        user = client.images.get(image).attrs["Config"].get("User") or ""
    finally:
        client.close()
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or int(uid) == 0 or (gid and not gid.isdigit()):
        raise VCEEnvironmentError(f"{image}: its user {user!r} is not a numeric non-root uid[:gid]; "
                                  "rebuild it from the project's Containerfile")
    for top in writable:
        for p in [top, *top.rglob("*")]:
            os.chown(p, int(uid), int(gid or uid), follow_symlinks=False)
    logger.info("running as root: the containers run as the image's user %s, who now owns %s",
                user, ", ".join(map(str, writable)))
    return f"{uid}:{gid or uid}"


def report_of_run(root: Path, before: set[str]) -> Path:
    """The report artifact (``compare-op``'s) of the one pipeline run that appeared under the kfp
    root ``root`` since it held the runs named ``before``: the DAG returns no output (kfp allows
    none from inside its exit handler), so the run's own folder is where the report is."""
    found = [d / "compare-op" / "report" for d in root.iterdir() if d.name not in before]
    found = [r for r in found if r.is_dir()]
    if len(found) != 1:
        raise RuntimeError(f"{root}: expected the report of one new pipeline run, found {[str(f) for f in found]}")
    return found[0]


def _close_runs(tracking_uri: str | None, token: str, experiment: str, status: str) -> None:
    """Close the MLflow runs this study left RUNNING (best effort: the original error matters more)."""
    if not tracking_uri:
        return
    from .tracking import close_owned_runs

    try:
        close_owned_runs(tracking_uri, token, status, experiment)
    except Exception as exc:  # noqa: BLE001 - e.g. the server went away: the next study reconciles
        logger.warning("could not close this study's MLflow runs at %s: %s", tracking_uri, exc)


def check_synthetic_cohort(data: Path, cfg: Config) -> None:
    """Refuse a synthetic cohort made with other settings than this profile's (a user's own
    cohort, without ``cohort.json``, is used as it is)."""
    import dataclasses
    import json

    from .io.errors import VCEInputError

    meta = data / "cohort.json"
    if not meta.is_file():
        return
    d = json.loads(meta.read_text())
    want = json.loads(json.dumps(dataclasses.asdict(cfg.synth)))
    if d.get("config") != want or d.get("seed") != cfg.seed:
        raise VCEInputError(
            f"{meta}: this synthetic cohort was made with other settings than profile {cfg.profile!r} "
            f"(seed {d.get('seed')}, {d.get('config')}); use another --data directory or remove it"
        )


def _print_summary(report: Path, root: Path, tracking_uri: str | None, wall: float) -> None:
    print("\n" + (report / "summary.md").read_text())
    preds = sorted(root.rglob("pred/*.nii.gz"))
    print(f"Study finished in {wall / 60:.1f} min.")
    print(f"  report (tables, figures): {report}")
    if preds:
        print(f"  predictions ({len(preds)} NIfTI volumes on the T2 grid), e.g.: {preds[0]}")
    print(f"  kfp artifacts (every step's inspectable output): {root}")
    if tracking_uri:
        print(f"  MLflow store: {tracking_uri}")
        if tracking_uri.startswith("sqlite:///"):
            print("  open the MLflow UI:  bash mlflow/ui.sh 5000   then browse http://127.0.0.1:5000 "
                  "(experiment 'vce-study': one parent run per study, one child run per variant)")
