"""``vce``: one command, one sub-command per step of the study. Argument parsing only.

Every sub-command reads ``params.yaml`` (``--params``, ``--profile``) and calls
:mod:`vce.steps`. Bad input exits with status 2 and a message naming the file. :func:`main` is
the one error boundary: bad input (:class:`~vce.io.errors.VCEInputError`, ``ConfigError``) and
the machine's faults (read-only or forbidden output, full disk, an ``OSError`` naming a file:
:func:`vce.io.errors.environment_error`) become one line ``vce <step>: error: <path>: <what>``
with exit status 2; anything else is a bug and keeps its traceback (``-v`` also logs the
traceback of an environment error at debug level).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .config import Config, ConfigError, Variant, load_config
from .io.atomic import check_writable
from .io.errors import VCEEnvironmentError, VCEInputError, environment_error

OUT = Path("outputs")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="params file (default: ./params.yaml)")
    p.add_argument("--profile", default=None, help="profile in the params file: demo | paper | tiny (default: its 'profile' key)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vce", description="Virtual contrast enhancement for MRI (PGMGVCE study).")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="STEP")
    _data_parsers(sub)
    _train_parser(sub)
    _result_parsers(sub)
    _cluster_parsers(sub)
    return ap


def _data_parsers(sub: argparse._SubParsersAction) -> None:
    """synth, import, validate, register, split, normalize."""
    p = sub.add_parser("synth", help="generate the synthetic cohort (raw layout)")
    p.add_argument("--out", default="data", help="cohort directory to write (default: data)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: cores, max 4)")
    _common(p)

    p = sub.add_parser("import", help="real patients (NIfTI or DICOM) -> de-identified raw cohort (docs/real_data.md)")
    p.add_argument("--src", required=True, help="one sub-folder per patient: T1/T2/T1C as NIfTI files or DICOM series")
    p.add_argument("--out", default="data", help="raw cohort directory to write, replaced as a whole (default: data)")
    p.add_argument("--mapping", default=None,
                   help="pseudonym mapping JSON, kept with the source data, never inside --out (default: <src>/.vce_pseudonyms.json)")
    p.add_argument("--series-rule", action="append", default=[], metavar="MOD=REGEX",
                   help="DICOM series rule: MOD=REGEX (include) or MOD!=REGEX (exclude), MOD in T1, T2, T1C; "
                        "matched case-insensitively against 'SeriesDescription | ProtocolName | #SeriesNumber' (repeatable)")
    p.add_argument("--series-rules", default=None, metavar="FILE",
                   help="YAML/JSON file: {T1C: {include: REGEX, exclude: REGEX}, T2: REGEX, ...}")
    p.add_argument("--rescale-12bit", action="store_true",
                   help="scale each patient's modality whose maximum exceeds 4095 linearly into [0, 4095] "
                        "(factor in import.json; docs/real_data.md)")
    _common(p)

    p = sub.add_parser("validate", help="check a raw cohort; JSON + CSV report; exit 1 if any error")
    p.add_argument("--raw", default="data", help="raw cohort directory (default: data)")
    p.add_argument("--report", default=str(OUT / "validate" / "report.json"),
                   help="report JSON path; the CSV goes next to it (default: outputs/validate/report.json)")
    p.add_argument("--min-fov-mm", type=float, default=100.0, help="warn below this in-plane field of view (default: 100)")
    p.add_argument("--fov-tolerance", type=float, default=0.2,
                   help="warn when T1/T1C physical extent differs from T2's by more than this fraction (default: 0.2)")
    _common(p)

    p = sub.add_parser("register", help="register T1 and T1C onto the T2 grid (rigid + B-spline, Mattes MI, QC; docs/registration.md)")
    p.add_argument("--raw", default="data", help="raw cohort directory (default: data)")
    p.add_argument("--out", default=str(OUT / "registered"))
    p.add_argument("--workers", type=int, default=None)
    _common(p)

    p = sub.add_parser("split", help="split by patient and write the 2D slice store")
    p.add_argument("--registered", default=str(OUT / "registered"))
    p.add_argument("--out", default=str(OUT / "split"))
    p.add_argument("--folds", type=int, default=None, help="override split.folds (0 = hold-out, k >= 2 = k-fold)")
    p.add_argument("--fold", type=int, default=None, help="override split.fold (test fold, 0..k-1)")
    _common(p)

    p = sub.add_parser("normalize", help="z-score / sigmoid / tanh normalisation per patient (eq. 11-13)")
    p.add_argument("--split", default=str(OUT / "split"))
    p.add_argument("--out", default=str(OUT / "normalized"))
    _common(p)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one variant of the study")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", metavar="NAME", help="variant name from params.yaml (e.g. pgmgvce_main)")
    which.add_argument("--variant-json", metavar="JSON",
                       help='a variant not in params.yaml, as a JSON object, e.g. \'{"name": "ratio_2to1", "lambda_pg": 2.0}\'')
    p.add_argument("--normalized", default=str(OUT / "normalized"))
    p.add_argument("--out", default=None, help="run directory (default: outputs/runs/<variant>)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: project SQLite store)")
    p.add_argument("--parent-run-id", default=None, help="MLflow parent (study) run id")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: vce-study)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--resume", action="store_true",
                   help="continue from the resumable state (<out>.partial/last.pt, train.checkpoint_every); "
                        "without it a stale state is deleted")
    p.add_argument("--state-dir", default=None, help="where the resumable state lives (default: <out>.partial)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes: relaunches itself under torchrun (gloo on CPU, nccl on CUDA)")
    _common(p)


def _result_parsers(sub: argparse._SubParsersAction) -> None:
    """evaluate, compare, predict, run."""
    p = sub.add_parser("evaluate", help="predict the test patients and compute the paper's metrics")
    p.add_argument("--model", required=True, help="run directory of a trained variant (holds checkpoint.pt)")
    p.add_argument("--registered", default=str(OUT / "registered"))
    p.add_argument("--split", default=str(OUT / "split"))
    p.add_argument("--normalized", default=str(OUT / "normalized"))
    p.add_argument("--out", default=None, help="default: outputs/eval/<run directory name>")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the project store)")
    p.add_argument("--no-tracking", action="store_true")
    _common(p)

    p = sub.add_parser("reference", help="the reference rows: oracle (resampling ceiling) and learnability regressor")
    p.add_argument("--registered", default=str(OUT / "registered"))
    p.add_argument("--split", default=str(OUT / "split"))
    p.add_argument("--normalized", default=str(OUT / "normalized"))
    p.add_argument("--out", default=str(OUT / "reference"))
    _common(p)

    p = sub.add_parser("compare", help="the paper's tables, the evaluation protocol, verdicts, metrics.json, report.html")
    p.add_argument("--eval", nargs="+", default=None, help="evaluation directories (default: outputs/eval/*)")
    p.add_argument("--reference", default=str(OUT / "reference"), help="output of `vce reference`")
    p.add_argument("--out", default=str(OUT / "report"))
    p.add_argument("--parent-run-id", default=None,
                   help="the study's MLflow parent run: the report is logged there and the champion registered "
                        "(without it nothing is tracked)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI of that run (default: $MLFLOW_TRACKING_URI, else the project store)")
    _common(p)

    p = sub.add_parser("predict", help="one patient's T1 + T2 (NIfTI or DICOM folder) -> synthetic T1C NIfTI")
    p.add_argument("--t1", required=True, help="T1-weighted NIfTI file or DICOM series folder")
    p.add_argument("--t2", required=True, help="T2-weighted NIfTI file or DICOM series folder (the output grid)")
    p.add_argument("--model", required=True,
                   help="run directory or checkpoint.pt, or an MLflow model URI, e.g. models:/vce-pgmgvce-demo@champion")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs (default: project store)")
    p.add_argument("--out", required=True, help="output NIfTI path (.nii.gz)")
    _common(p)

    p = sub.add_parser("run", help="the whole study through the Kubeflow pipeline (kfp local runner)")
    p.add_argument("--data", default="data", help="raw cohort (synthesised there first if absent)")
    p.add_argument("--out", default=str(OUT / "study"), help="study outputs (kfp artifacts, report)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: project SQLite store)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: vce-study)")
    p.add_argument("--parallelism", type=int, default=None, help="trainings at once (default: profile's study.parallelism)")
    p.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                   help="kfp local runner: subprocess (this environment, default) or docker (each step in the "
                        "project image via $DOCKER_HOST: Docker or podman's API; docs/container.md)")
    _common(p)


def _endpoint_flags(p: argparse.ArgumentParser) -> None:
    """The KFP endpoint, auth and pipeline flags of ``vce submit`` / ``vce schedule`` (docs/submit.md)."""
    p.add_argument("--host", default=None, help="KFP API URL, e.g. https://kubeflow.example.org/pipeline (default: $KFP_HOST)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="file holding the bearer token (default: $KFP_TOKEN; no --token flag: a command line is public)")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace of a multi-user KFP (default: $KFP_NAMESPACE)")
    p.add_argument("--kfp-experiment", default=None, help="KFP experiment, created when absent (default: vce-study)")
    p.add_argument("--ui-host", default=None, help="KFP UI URL for the printed link (default: $KFP_UI_HOST, else --host)")
    p.add_argument("--ca-cert", default=None, metavar="PATH", help="CA bundle for a TLS endpoint with a private CA")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the endpoint (default: 10)")
    p.add_argument("--pipeline", default=None, help="compiled pipeline (default: pipelines/vce_study.yaml)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other pipeline parameter, e.g. tracking_uri=http://mlflow.vce.svc:5000 (repeatable; "
                        "checked against the compiled pipeline's parameters)")
    p.add_argument("--pipeline-root", default=None, help="root of the run's artifacts, e.g. s3://bucket/vce (default: KFP's)")
    p.add_argument("--service-account", default=None, help="Kubernetes service account of the run's pods")
    _common(p)


def _cluster_parsers(sub: argparse._SubParsersAction) -> None:
    """submit, schedule."""
    p = sub.add_parser("submit", help="one run of the compiled study on a Kubeflow Pipelines endpoint (docs/submit.md)")
    p.add_argument("--run-name", default=None, help="run name in the KFP UI (default: vce-study <profile> <UTC time>)")
    p.add_argument("--no-cache", action="store_true", help="run every task again (overrides the compiled caching options)")
    _endpoint_flags(p)

    p = sub.add_parser("schedule", help="a recurring run on a cron schedule (one at a time, no catch-up; docs/submit.md)")
    p.add_argument("--cron", required=True,
                   help="KFP cron, 6 fields with seconds first, UTC: '0 0 2 * * *' is 02:00 daily, '0 0 3 * * 1' Mondays 03:00")
    p.add_argument("--name", default=None, help="recurring run name (default: vce-study <profile> schedule)")
    p.add_argument("--pipeline-name", default=None,
                   help="KFP pipeline to upload the package to as a new version (default: the package's name, vce-study)")
    _endpoint_flags(p)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow.store.db.utils", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except (VCEInputError, ConfigError) as exc:
        return _refuse(args, exc)
    except Exception as exc:  # the one error boundary: the machine's faults become one line, bugs keep their traceback
        env = environment_error(exc, _output_path(args))
        if env is None:
            record_error(args.cmd, 1, f"{type(exc).__name__}: {exc}", traceback=True)
            raise
        env.__cause__ = exc
        return _refuse(args, env)


def _refuse(args: argparse.Namespace, exc: Exception) -> int:
    """Print ``vce <step>: error: <message>`` on one line (stderr) and return exit status 2; an
    environment error's traceback (of what the machine raised) is logged at debug level (``-v``)."""
    if isinstance(exc, VCEEnvironmentError) and exc.__cause__ is not None:
        logging.getLogger(__name__).debug("vce %s: %s", args.cmd, type(exc.__cause__).__name__, exc_info=exc.__cause__)
    print(f"vce {args.cmd}: error: {exc}", file=sys.stderr)
    record_error(args.cmd, 2, str(exc))
    return 2


#: When set, every refused or failed command appends one JSON line to this file (step, exit status,
#: message, whether a traceback was printed, the pytest test that ran it): the fault suite's
#: table of bad-input classes is rendered from it (``scripts/error_table.py``).
ERROR_LOG_ENV = "VCE_ERROR_LOG"


def record_error(cmd: str, code: int, message: str, *, traceback: bool = False) -> None:
    """Append this failure to ``$VCE_ERROR_LOG`` (nothing when unset)."""
    path = os.environ.get(ERROR_LOG_ENV)
    if not path:
        return
    import json

    line = {"step": cmd, "exit": code, "message": message, "traceback": traceback,
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _output_paths(args: argparse.Namespace) -> list[Path]:
    """Where the step writes: ``--out``, ``--report``, ``--state-dir`` as given, else ``outputs``."""
    given = [Path(v) for v in (getattr(args, n, None) for n in ("out", "report", "state_dir")) if v]
    return given or [OUT]


def _output_path(args: argparse.Namespace) -> Path:
    """The step's main output: named by an environment error that names no file, and whose free
    space tells a full disk from a bug."""
    return _output_paths(args)[0]


def _dispatch(args: argparse.Namespace) -> int:
    cfg = load_config(args.params, args.profile)
    for out in ([] if args.cmd in REMOTE_COMMANDS else _output_paths(args)):  # a read-only or forbidden output fails now
        check_writable(out)
    return COMMANDS[args.cmd](args, cfg)


def _synth(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps

    pids = steps.synth(args.out, cfg, args.workers)
    print(f"wrote {len(pids)} synthetic patients to {args.out}")
    return 0


def _import(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps

    pids = steps.import_patients(args.src, args.out, mapping=args.mapping, series_rules=args.series_rule,
                                 series_rules_file=args.series_rules, rescale_12bit=args.rescale_12bit)
    print(f"imported {len(pids)} patient(s) into {args.out}: {', '.join(pids)}")
    return 0


def _validate(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps
    from .prep.validate import format_summary

    report, paths = steps.validate(args.raw, args.report, cfg, min_fov_mm=args.min_fov_mm, fov_tolerance=args.fov_tolerance)
    print(format_summary(report))
    print(f"report: {paths[0]} {paths[1]}")
    if not report["ok"]:
        errors = [f"{pid}: {i['check']}: {i['message']}" for pid, p in report["patients"].items()
                  for i in p["issues"] if i["severity"] == "error"]
        errors += [f"cohort: {i['check']}: {i['message']}" for i in report["cohort"] if i["severity"] == "error"]
        record_error("validate", 1, "; ".join(errors) or "report not ok")
    return 0 if report["ok"] else 1


def _register(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps

    qc = steps.register(args.raw, args.out, cfg, args.workers)
    print(qc.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def _split(args: argparse.Namespace, cfg: Config) -> int:
    import dataclasses

    from . import steps

    over = {k: v for k, v in (("folds", args.folds), ("fold", args.fold)) if v is not None}
    if over:
        cfg = dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, **over))
    m = steps.split(args.registered, args.out, cfg)
    print(m.groupby("split").agg(patients=("patient", "count"), slices=("n_slices", "sum")).to_string())
    return 0


def _normalize(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps

    steps.normalize(args.split, args.out, cfg)
    print(f"wrote {args.out}")
    return 0


def _variant(args: argparse.Namespace, cfg: Config) -> Variant:
    """``--variant NAME`` (one of params.yaml's variants) or ``--variant-json JSON``."""
    return cfg.variant(args.variant) if args.variant is not None else Variant.from_json(args.variant_json)


def _train(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps
    from .tracking import DEFAULT_EXPERIMENT, default_tracking_uri

    variant = _variant(args, cfg)
    out = args.out or str(OUT / "runs" / variant.name)
    if args.nproc > 1 and "RANK" not in os.environ:
        return _torchrun(args, out)
    uri = None if args.no_tracking else (args.tracking_uri or default_tracking_uri())
    steps.train(args.normalized, out, cfg, variant, tracking_uri=uri, parent_run_id=args.parent_run_id,
                experiment=args.experiment or DEFAULT_EXPERIMENT, resume=args.resume, state_dir=args.state_dir,
                device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out}")
    return 0


def _evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps

    from .tracking import default_tracking_uri

    out = args.out or str(OUT / "eval" / Path(args.model).name)
    t = steps.evaluate(args.model, args.registered, args.split, args.normalized, out, cfg, track=not args.no_tracking,
                       tracking_uri=args.tracking_uri or default_tracking_uri())
    shown = [c for c in ("patient", "mae", "mae_body", "mae_tumour", "ssim_body", "mae_body_cal", "enh_ratio_ring",
                         "gt_enh_ratio_ring", "enh_dice") if c in t.columns]
    print(t[shown].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"all metrics: {Path(out) / 'metrics_patients.csv'} (docs/metrics.md)")
    return 0


def _reference(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps

    out = steps.reference(args.registered, args.split, args.normalized, args.out, cfg)
    print(f"wrote {out}")
    return 0


def _compare(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps
    from .reporting.rendering import format_console
    from .tracking import default_tracking_uri

    dirs = args.eval or sorted(str(p.parent) for p in (OUT / "eval").glob("*/variant.json"))
    if not dirs:
        raise VCEInputError(f"{OUT / 'eval'}: no evaluation directories (run `vce evaluate` first)")
    uri = (args.tracking_uri or default_tracking_uri()) if args.parent_run_id else None
    tables = steps.compare(dirs, args.out, cfg, tracking_uri=uri, parent_run_id=args.parent_run_id,
                           reference=args.reference)
    print(format_console(tables))
    print(f"\nreport: {Path(args.out) / 'summary.md'}")
    return 0


def _predict(args: argparse.Namespace, cfg: Config) -> int:
    from . import steps
    from .predict import check_output
    from .tracking import default_tracking_uri

    check_output(args.out)  # before the model is resolved or any image read
    steps.predict(args.t1, args.t2, args.model, args.out, cfg, tracking_uri=args.tracking_uri or default_tracking_uri())
    print(f"wrote {args.out}")
    return 0


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from .study import run_study
    from .tracking import default_tracking_uri

    try:
        run_study(cfg, data=args.data, out=args.out, tracking_uri=args.tracking_uri or default_tracking_uri(),
                  experiment=args.experiment, parallelism=args.parallelism, params_path=args.params,
                  runner=args.runner)
    except RuntimeError as exc:
        failed = failed_task(exc)
        if failed is None:
            raise
        print(f"vce run: error: the study failed in step {failed} (its log is above); this study's MLflow "
              f"runs are closed FAILED and every finished step's output is kept under {Path(args.out) / 'kfp'}",
              file=sys.stderr)
        record_error("run", 1, f"the study failed in step {failed}")
        return 1
    return 0


def failed_task(exc: BaseException) -> str | None:
    """The task named by kfp's local runner in "Pipeline ... finished with status FAILURE. Inner
    task failed: ..." (colour codes removed), or None for any other error."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"finished with status FAILURE\. Inner task failed: (.+?)\.?$", text)
    return m.group(1).strip() if m else None


#: Sub-commands that write nothing here (they talk to a KFP endpoint).
REMOTE_COMMANDS = ("submit", "schedule")


def _kfp_target(args: argparse.Namespace):
    """(endpoint, compiled pipeline, its arguments) from the flags of submit/schedule."""
    from .config import default_params_path
    from .submit import DEFAULT_TIMEOUT_S, default_pipeline_path, pipeline_arguments, resolve_endpoint

    ep = resolve_endpoint(args.host, args.token_file, args.namespace, args.ui_host, args.ca_cert,
                          args.timeout if args.timeout is not None else DEFAULT_TIMEOUT_S)
    pipeline = args.pipeline or str(default_pipeline_path())
    arguments = pipeline_arguments(pipeline, args.params or default_params_path(), args.profile, args.arg)
    return ep, pipeline, arguments


def _submit(args: argparse.Namespace, cfg: Config) -> int:
    from .submit import DEFAULT_EXPERIMENT, submit_run

    ep, pipeline, arguments = _kfp_target(args)
    done = submit_run(ep, pipeline, arguments, run_name=args.run_name, experiment=args.kfp_experiment or DEFAULT_EXPERIMENT,
                      cache=not args.no_cache, pipeline_root=args.pipeline_root,
                      service_account=args.service_account)
    print(f"run id: {done.id}\nexperiment id: {done.experiment_id}\nUI: {done.url}")
    return 0


def _schedule(args: argparse.Namespace, cfg: Config) -> int:
    from .submit import DEFAULT_EXPERIMENT, schedule_run, validate_cron

    validate_cron(args.cron)  # before any network
    ep, pipeline, arguments = _kfp_target(args)
    done = schedule_run(ep, pipeline, arguments, args.cron, name=args.name, experiment=args.kfp_experiment or DEFAULT_EXPERIMENT,
                        pipeline_name=args.pipeline_name, pipeline_root=args.pipeline_root,
                        service_account=args.service_account)
    print(f"recurring run id: {done.id}\npipeline id: {done.pipeline_id}\npipeline version id: {done.pipeline_version_id}"
          f"\nexperiment id: {done.experiment_id}\nUI: {done.url}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "synth": _synth, "import": _import, "validate": _validate, "register": _register, "split": _split,
    "normalize": _normalize, "train": _train, "evaluate": _evaluate, "reference": _reference, "compare": _compare, "predict": _predict,
    "run": _run, "submit": _submit, "schedule": _schedule,
}


def _variant_args(args: argparse.Namespace) -> list[str]:
    """The variant as it was given on the command line (``--variant`` or ``--variant-json``)."""
    return ["--variant", args.variant] if args.variant is not None else ["--variant-json", args.variant_json]


def _torchrun(args: argparse.Namespace, out: str) -> int:
    """``vce train --nproc N``: rerun the same training under ``torchrun --nproc_per_node N``."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "vce.cli", "train", *_variant_args(args), "--normalized", args.normalized, "--out", out]
    for flag, value in (("--tracking-uri", args.tracking_uri), ("--parent-run-id", args.parent_run_id),
                        ("--experiment", args.experiment), ("--state-dir", args.state_dir), ("--device", args.device), ("--params", args.params),
                        ("--profile", args.profile)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += [f for f, on in (("--no-tracking", args.no_tracking), ("--resume", args.resume), ("-v", args.verbose)) if on]
    logging.getLogger(__name__).info("launching %s", " ".join(cmd))
    from .runtime import OWNER_PID_ENV, owning

    if OWNER_PID_ENV in os.environ:  # launched by `vce run`: the workers already watch its owner
        return subprocess.run(cmd, check=False).returncode
    with owning():  # a `vce train --nproc N` of its own: the workers die with this process
        return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
