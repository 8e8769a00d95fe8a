"""Data components: cohort -> register -> split -> normalize."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from . import VCE_IMAGE


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def fingerprint_op(source_dir: str) -> str:
    """The content digest of the raw cohort at ``source_dir`` (``vce.io.fingerprint``; '' when it
    is empty: synthesis). Never cached: it is what the cohort step's cache is keyed on."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    from vce.io.fingerprint import cohort_digest

    return cohort_digest(source_dir)


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def cohort_op(source_dir: str, data_digest: str, params_yaml: str, profile: str, cohort: Output[Dataset]):
    """Snapshot the raw cohort at ``source_dir`` (validated), or synthesise one when it is empty.

    ``data_digest`` (``fingerprint_op``'s output) is the cohort's content hash: an input only so
    that the cache misses when the files under ``source_dir`` change; it is checked again after
    the copy (the files must not change while the snapshot is taken)."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    import os
    import shutil

    from vce import steps
    from vce.config import load_config_text
    from vce.io.atomic import atomic_dir
    from vce.io.cohort import list_patients

    cfg = load_config_text(params_yaml, profile)
    if source_dir:
        pids = list_patients(source_dir)
        with atomic_dir(cohort.path) as tmp:
            for pid in pids:
                shutil.copytree(f"{source_dir}/{pid}", tmp / pid)
            if os.path.isfile(f"{source_dir}/cohort.json"):
                shutil.copy2(f"{source_dir}/cohort.json", tmp / "cohort.json")
        from vce.io.fingerprint import cohort_digest

        if cohort_digest(cohort.path) != data_digest:
            raise RuntimeError(f"{source_dir}: the cohort changed while it was copied (digest {data_digest} before)")
        cohort.metadata["data_digest"] = data_digest
        cohort.metadata["source_dir"] = source_dir
        from vce.lineage import dvc_dir_md5

        cohort.metadata["dvc_md5"] = dvc_dir_md5(source_dir)  # as `dvc add` records the folder (lineage)
    else:
        pids = steps.synth(cohort.path, cfg)
    cohort.metadata["patients"] = len(pids)


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def register_op(cohort: Input[Dataset], params_yaml: str, profile: str, registered: Output[Dataset]):
    """T1 and T1C onto the T2 grid; QC table in the artifact."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    from vce import steps
    from vce.config import load_config_text

    qc = steps.register(cohort.path, registered.path, load_config_text(params_yaml, profile))
    import math

    for col in [c for c in qc.columns if c.endswith("tre_mean_mm")]:
        value = float(qc[col].mean())
        if math.isfinite(value):  # a real cohort has no true motion, so no TRE; kfp cannot store NaN
            registered.metadata[col] = value


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def split_op(registered: Input[Dataset], params_yaml: str, profile: str, split: Output[Dataset]):
    """Patient-level split and 2D slice store."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    import json

    from vce import steps
    from vce.config import load_config_text

    steps.split(registered.path, split.path, load_config_text(params_yaml, profile))
    info = json.load(open(f"{split.path}/split.json"))
    split.metadata.update({"split_id": info["split_id"], **{f"{k}_slices": v for k, v in info["slices"].items()}})


@dsl.component(base_image=VCE_IMAGE, install_kfp_package=False)
def normalize_op(split: Input[Dataset], params_yaml: str, profile: str, normalized: Output[Dataset]):
    """z-score, sigmoid and tanh stores plus per-patient parameters and the T1C calibration."""
    from vce.runtime import die_with_parent

    die_with_parent()  # a kill -9 of `vce run` takes this process with it

    from vce import steps
    from vce.config import load_config_text

    params = steps.normalize(split.path, normalized.path, load_config_text(params_yaml, profile))
    normalized.metadata["calibration_rel_error_mu"] = params["calibration"]["train_rel_error_mu"]
