"""k8s/: every kustomization renders with the real ``kubectl kustomize`` and validates offline
against the declared Kubernetes version with ``kubernetes-validate --strict``; the rendered
objects say what the cluster setup promises (restricted pods, probes, Recreate on single-attach
volumes, requests/limits, credentials only as secretKeyRefs, NetworkPolicies, MLflow on PostgreSQL
+ S3 with host names that include the port, the pipeline's names); the PyTorchJob (a custom
resource: no schema offline) is checked structurally, its pod template against the core schema,
and its launcher flags by a real two-node torchrun rendezvous on loopback; the allowed-hosts
value is checked against a real ``mlflow server``. No cluster runs here (k8s/README.md)."""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

K8S = ROOT / "k8s"
K8S_VERSION = "1.32.0"  # the version the manifests are validated against (k8s/README.md)
KUSTOMIZATIONS = ("base", "overlays/local", "overlays/gpu-cluster", "overlays/gpu-cluster/training")
STACKS = ("overlays/local", "overlays/gpu-cluster")  # the deployable wholes: base + pipeline namespace
CRD_GROUPS = ("kubeflow.org/",)  # custom resources: no schema in kubernetes-validate
NS = "vce"
PIPELINE_NS_LABEL = {"pipelines.kubeflow.org/enabled": "true"}
#: the Secrets the manifests reference, per namespace role, and their keys (k8s/README.md creates them)
SECRETS = {
    "mlflow-auth": {"username", "password", "flask-secret-key"},
    "postgres-credentials": {"username", "password"},
    "vce-object-store": {"access-key-id", "secret-access-key"},
}
CREDENTIAL_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|USER(NAME)?$|_KEY$")


def _kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render k8s/: install kubectl >= 1.27")
    return exe


@functools.lru_cache(maxsize=None)
def _render_text(rel: str) -> str:
    r = subprocess.run([_kubectl(), "kustomize", str(K8S / rel)], capture_output=True, text=True)
    assert r.returncode == 0, f"kubectl kustomize k8s/{rel}: {r.stderr}"
    return r.stdout


def rendered(rel: str) -> list[dict]:
    """The objects ``kubectl kustomize k8s/<rel>`` renders (a fresh copy each call)."""
    return [d for d in yaml.safe_load_all(_render_text(rel)) if d]


def _is_crd(doc: dict) -> bool:
    return doc["apiVersion"].startswith(CRD_GROUPS)


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(``Kind/name[/replica]``, pod template) of every workload: Deployments, Jobs, PyTorchJob replicas."""
    out = []
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out.append((name, d["spec"]["template"]))
        elif d["kind"] == "PyTorchJob":
            out += [(f"{name}/{r}", spec["template"]) for r, spec in d["spec"]["pytorchReplicaSpecs"].items()]
    return out


def one(docs: list[dict], kind: str, name: str) -> dict:
    (d,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return d


def _validate(files: dict[str, list[dict]], folder: Path) -> tuple[int, str]:
    """``kubernetes-validate --strict -k K8S_VERSION`` (the CLI of the pinned package), one run
    over ``files`` (name -> objects, each written to ``folder/name.yaml``): (exit code, output)."""
    exe = Path(sys.executable).parent / "kubernetes-validate"
    if not exe.exists():
        pytest.fail("kubernetes-validate is missing: pip install -r requirements.txt")
    paths = []
    for name, docs in files.items():
        paths.append(folder / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump_all(docs, sort_keys=False))
    r = subprocess.run([str(exe), "--strict", "-k", K8S_VERSION, *map(str, paths)], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def _as_pod_template(label: str, template: dict) -> dict:
    """A custom resource's embedded pod template as a core ``PodTemplate``, which has a schema."""
    name = re.sub(r"[^a-z0-9-]", "-", label.lower())[:63].strip("-")
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


# ---------------------------------------------------------------- rendering and schema validation


def _schema_checked(rel: str) -> list[dict]:
    """What of ``rel`` has a schema: its core objects, and its custom resources' pod templates as
    core ``PodTemplate`` objects."""
    docs = rendered(rel)
    core = [d for d in docs if not _is_crd(d)]
    return core + [_as_pod_template(label, t) for label, t in pod_templates([d for d in docs if _is_crd(d)])]


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> tuple[int, str]:
    """One validator run over every kustomization (its start-up dominates: one instead of four)."""
    files = {rel.replace("/", "_"): _schema_checked(rel) for rel in KUSTOMIZATIONS}
    return _validate(files, tmp_path_factory.mktemp("validate"))


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_every_kustomization_renders_and_validates_strictly(rel, validation):
    """Every object of every kustomization passes the strict schema of Kubernetes 1.32 (unknown
    fields refused); the custom resources' pod templates pass the core PodTemplate schema."""
    rc, out = validation
    assert rc == 0, out
    mine = [line for line in out.splitlines() if f"/{rel.replace('/', '_')}.yaml " in line]
    assert len(mine) == len(_schema_checked(rel)), out
    assert all(" passed for resource " in line and "version 1.32" in line for line in mine), out
    assert "WARN" not in out and "ERROR" not in out, out


def test_the_validator_refuses_an_unknown_field_and_a_wrong_type(tmp_path):
    """The check above can fail: a misspelt field or a number where a string belongs is refused."""
    typo, wrong = (one(rendered("base"), "Deployment", "mlflow") for _ in range(2))
    typo["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {"runAsNonRoot": True}
    wrong["spec"]["template"]["spec"]["containers"][0]["image"] = 5
    rc, out = _validate({"typo": [typo], "wrong": [wrong]}, tmp_path)
    assert rc != 0
    assert re.search(r"ERROR \S*/typo\.yaml .*'securityContxt' was unexpected", out), out
    assert re.search(r"ERROR \S*/wrong\.yaml .*image: 5 is not of type 'string'", out), out


def test_kustomize_base_renders():
    """The base holds the services, all in the namespace `vce`; each stack adds the data volume in
    the pipeline's namespace; the training job lives there too."""
    docs = rendered("base")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", NS), ("Deployment", "mlflow"), ("Service", "mlflow"), ("ConfigMap", "mlflow-auth-config"),
            ("Deployment", "postgres"), ("Service", "postgres"), ("Deployment", "minio"), ("Service", "minio"),
            ("Job", "minio-bucket")} <= kinds
    assert all(d["metadata"].get("namespace", NS) == NS for d in docs)
    for rel, ns in (("overlays/local", "kubeflow"), ("overlays/gpu-cluster", "kubeflow-user-example-com")):
        pvc = one(rendered(rel), "PersistentVolumeClaim", _pipeline_pvc())
        assert pvc["metadata"]["namespace"] == ns, rel
    job = one(rendered("overlays/gpu-cluster/training"), "PyTorchJob", "vce-train-multinode")
    assert job["metadata"]["namespace"] == "kubeflow-user-example-com"


# ---------------------------------------------------------------- pods: security, resources, probes


def _quantity(q) -> float:
    """A Kubernetes quantity (``250m``, ``2``, ``768Mi``, ``1Gi``, ``1Ti``) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m and (m.group(2) in units or not m.group(2)), q
    return float(m.group(1)) * units.get(m.group(2), 1)


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_every_pod_is_restricted(rel):
    """Pod Security "restricted" for every pod, plus a read-only root filesystem with /tmp on an
    emptyDir, no service-account token, no host namespaces; the namespace enforces restricted."""
    templates = pod_templates(rendered(rel))
    assert templates
    for label, t in templates:
        spec = t["spec"]
        psc = spec.get("securityContext", {})
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), label
        assert spec.get("automountServiceAccountToken") is False, label
        emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], label
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            where = f"{label}/{c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sc.get("allowPrivilegeEscalation") is False and sc.get("privileged") is not True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc.get("readOnlyRootFilesystem") is True, where
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in emptydirs, f"{where}: /tmp must be an emptyDir"
    for d in rendered(rel):
        if d["kind"] == "Namespace":
            assert d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_every_container_has_requests_and_limits(rel):
    """CPU and memory requests and limits on every container, each request within its limit."""
    for label, t in pod_templates(rendered(rel)):
        for c in t["spec"]["containers"]:
            res, where = c.get("resources", {}), f"{label}/{c['name']}"
            for kind in ("cpu", "memory"):
                req, lim = res.get("requests", {}).get(kind), res.get("limits", {}).get(kind)
                assert req is not None and lim is not None, f"{where}: {kind}"
                assert _quantity(req) <= _quantity(lim), f"{where}: {kind} {req} > {lim}"


def _pvc_modes(docs: list[dict]) -> dict[str, list[str]]:
    return {d["metadata"]["name"]: d["spec"]["accessModes"] for d in docs if d["kind"] == "PersistentVolumeClaim"}


@pytest.mark.parametrize("rel", STACKS + ("base",))
def test_probes_and_recreate_on_single_attach_volumes(rel):
    """Every long-running container has readiness and liveness probes (MLflow's on /health of
    its port); a Deployment on a ReadWriteOnce volume is Recreate (two pods never fight over it)."""
    docs = rendered(rel)
    modes = _pvc_modes(docs)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"mlflow", "postgres", "minio"}
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), d["metadata"]["name"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v]
        assert all(claim in modes for claim in claims), claims
        if any("ReadWriteOnce" in modes[claim] for claim in claims):
            assert d["spec"]["strategy"]["type"] == "Recreate", d["metadata"]["name"]
    mlflow = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    (c,) = mlflow["containers"]
    port = c["ports"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health" and c[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    assert not [v for v in mlflow.get("volumes", []) if "persistentVolumeClaim" in v]  # stateless: all in PostgreSQL/S3


# ---------------------------------------------------------------- secrets


def _env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_no_credential_is_written_into_the_manifests(rel):
    """No Secret object, no secretGenerator; every credential-like env var is a secretKeyRef to a
    documented Secret and key; no URI or argument carries a user:password."""
    docs = rendered(rel)
    assert not [d for d in docs if d["kind"] == "Secret"]
    for kfile in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(kfile.read_text()), kfile
    for label, t in pod_templates(docs):
        for c in t["spec"]["containers"]:
            for name, e in _env(c).items():
                if CREDENTIAL_ENV.search(name):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    assert "value" not in e and ref, f"{label}: {name} must come from a Secret"
                    assert ref["key"] in SECRETS.get(ref["name"], ()), f"{label}: {name} -> {ref}"
            for text in [*c.get("command", []), *c.get("args", []), *(e.get("value", "") for e in c.get("env", []))]:
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"{label}: credentials in {text!r}"
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert not re.search(r"password\s*=|://[^/\s:@]+:[^/\s@]+@", yaml.safe_dump(d["data"]), re.I), d["metadata"]["name"]


def test_the_readme_creates_every_referenced_secret_with_its_keys():
    """Each Secret the manifests reference is created in k8s/README.md with exactly the keys used."""
    readme = (K8S / "README.md").read_text()
    used: dict[str, set[str]] = {}
    for rel in KUSTOMIZATIONS:
        for _, t in pod_templates(rendered(rel)):
            for c in t["spec"]["containers"]:
                for e in c.get("env", []):
                    if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                        used.setdefault(ref["name"], set()).add(ref["key"])
    assert used == SECRETS
    for name, keys in used.items():
        blocks = re.findall(rf"create secret generic {name} \\\n((?:.*\\\n)*.*)", readme)
        assert blocks, f"k8s/README.md does not create {name}"
        created = [set(re.findall(r"--from-literal=([a-z-]+)=", block)) for block in blocks]
        assert keys in created and all(c <= keys for c in created), (name, created)  # one has all keys


def test_mlflow_server_has_auth_on_with_credentials_from_a_secret():
    """The cluster's MLflow runs MLflow's basic-auth app; the admin user and Flask secret are
    secretKeyRefs to the Secret the pipeline reads too (pipelines/vce_study.py), never inlined; no
    Secret (with a password in it) is part of the manifests. Its user database is PostgreSQL's
    `mlflow_auth` (created by the init script), reached with PGUSER/PGPASSWORD, not a password."""
    from pipelines.vce_study import MLFLOW_SECRET, MLFLOW_SECRET_ENV

    docs = rendered("base")
    deploy = one(docs, "Deployment", "mlflow")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"] and "--app-name=basic-auth" in c["args"]
    env = _env(c)
    for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key")):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"] == {"name": MLFLOW_SECRET, "key": key}, name
    assert set(MLFLOW_SECRET_ENV) <= SECRETS[MLFLOW_SECRET]  # the pipeline reads keys the server's Secret has
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    mount = next(m for m in c["volumeMounts"] if ini_path.startswith(m["mountPath"] + "/"))
    vol = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    ini = one(docs, "ConfigMap", vol["configMap"]["name"])["data"][ini_path.rsplit("/", 1)[1]]
    auth_db = re.search(r"database_uri = postgresql://postgres:5432/(\w+)\n", ini)
    assert auth_db and "admin_password" not in ini
    init_sql = "".join(one(docs, "ConfigMap", "postgres-init")["data"].values())
    assert f"CREATE DATABASE {auth_db.group(1)};" in init_sql
    for name, key in (("PGUSER", "username"), ("PGPASSWORD", "password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "postgres-credentials", "key": key}


# ---------------------------------------------------------------- MLflow, PostgreSQL, object store


def _args(c: dict) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in c["args"])


def _service_port(docs: list[dict], name: str) -> int:
    (p,) = one(docs, "Service", name)["spec"]["ports"]
    return p["port"]


def mlflow_allowed_hosts(rel: str = "overlays/gpu-cluster") -> str:
    (c,) = one(rendered(rel), "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    return _args(c)["allowed-hosts"]


@pytest.mark.parametrize("rel", STACKS)
def test_mlflow_runs_on_postgresql_and_s3_with_every_service_name_allowed(rel):
    """Backend store: the `postgres` Service's database POSTGRES_DB; artifacts: the bucket the
    Job creates, at the `minio` Service; --allowed-hosts: every name of the Service, with and
    without its port (MLflow compares the port too); one worker, no job runner."""
    docs = rendered(rel)
    (c,) = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args, env = _args(c), _env(c)
    port = _service_port(docs, "mlflow")
    assert int(args["port"]) == c["ports"][0]["containerPort"] == port and args["host"] == "0.0.0.0"
    assert args["workers"] == "1" and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    (pg,) = one(docs, "Deployment", "postgres")["spec"]["template"]["spec"]["containers"]
    assert args["backend-store-uri"] == f"postgresql://postgres:{_service_port(docs, 'postgres')}/{_env(pg)['POSTGRES_DB']['value']}"
    (mc,) = one(docs, "Job", "minio-bucket")["spec"]["template"]["spec"]["containers"]
    bucket = re.search(r"mc mb --ignore-existing vce/([a-z0-9-]+)", mc["command"][-1]).group(1)
    assert re.fullmatch(rf"s3://{bucket}/[a-z0-9/-]+", args["artifacts-destination"]) and "serve-artifacts" in args
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == f"http://minio:{_service_port(docs, 'minio')}"
    hosts = args["allowed-hosts"].split(",")
    names = ["mlflow", f"mlflow.{NS}", f"mlflow.{NS}.svc", f"mlflow.{NS}.svc.cluster.local"]
    assert {*names, *(f"{n}:{port}" for n in names)} <= set(hosts)
    assert "*" not in hosts and not [h for h in hosts if "*" in h and not h.startswith(("localhost:", "127.0.0.1:"))]


@pytest.mark.parametrize("rel", STACKS)
def test_network_policies_admit_only_the_pipeline_namespace_and_mlflow(rel):
    """Default deny; MLflow only from namespaces labelled as KFP pipeline namespaces, on its port;
    PostgreSQL only from MLflow; MinIO only from MLflow and the bucket Job; each selector matches
    real pods; no ipBlock anywhere."""
    docs = rendered(rel)
    pols = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert all(d["metadata"]["namespace"] == NS for d in docs if d["kind"] == "NetworkPolicy")
    assert pols["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods = {t["metadata"]["labels"]["app"] for _, t in pod_templates(docs)}

    def sources(app: str) -> tuple[list[dict], list[dict]]:
        (p,) = [p for p in pols.values() if p["podSelector"].get("matchLabels") == {"app": app}]
        assert p["policyTypes"] == ["Ingress"]
        (rule,) = p["ingress"]
        return rule["from"], rule["ports"]

    frm, ports = sources("mlflow")
    assert frm == [{"namespaceSelector": {"matchLabels": PIPELINE_NS_LABEL}}]
    assert ports == [{"protocol": "TCP", "port": _service_port(docs, "mlflow")}]
    for app, clients, svc in (("postgres", ["mlflow"], "postgres"), ("minio", ["mlflow", "minio-bucket"], "minio")):
        frm, ports = sources(app)
        assert frm == [{"podSelector": {"matchLabels": {"app": a}}} for a in clients], app
        assert ports == [{"protocol": "TCP", "port": _service_port(docs, svc)}]
        assert app in pods and set(clients) <= pods
    assert "ipBlock" not in yaml.safe_dump(list(pols.values()))
    assert "pipelines.kubeflow.org/enabled=true" in (K8S / "README.md").read_text()


# ---------------------------------------------------------------- the pipeline's contract


def _pipeline_pvc() -> str:
    from pipelines.vce_study import DATA_PVC

    return DATA_PVC


def test_the_manifests_provide_what_the_pipeline_names():
    """pipelines/vce_study.py and k8s/ agree: its default tracking URI is the MLflow Service (an
    allowed host, port included); the PVC it mounts exists in the pipeline namespace of each stack;
    the Secrets it reads are the ones documented, with keys the server side uses; its GPU
    placement defaults are the node-pool assumptions of the gpu-cluster overlay."""
    import pipelines.vce_study as vs

    base = rendered("base")
    host = vs.CLUSTER_TRACKING_URI.removeprefix("http://")
    assert host == f"mlflow.{NS}.svc:{_service_port(base, 'mlflow')}" and host in mlflow_allowed_hosts().split(",")
    for rel in STACKS:
        pvc = one(rendered(rel), "PersistentVolumeClaim", vs.DATA_PVC)
        assert pvc["metadata"]["namespace"] != NS, rel  # the tasks' namespace, not the services'
    assert one(rendered("overlays/gpu-cluster"), "PersistentVolumeClaim", vs.DATA_PVC)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert set(vs.MLFLOW_SECRET_ENV) <= SECRETS[vs.MLFLOW_SECRET]
    creds = {k for k, env in vs.OBJECT_STORE_SECRET_ENV.items() if env.startswith("AWS_")}
    assert creds == SECRETS[vs.OBJECT_STORE_SECRET]
    readme = (K8S / "README.md").read_text()
    for needle in (vs.DATA_PVC, vs.DATA_MOUNT, vs.MLFLOW_SECRET, vs.OBJECT_STORE_SECRET, "nvidia.com/gpu.present=true",
                   "nvidia.com/gpu:NoSchedule", *vs.OBJECT_STORE_SECRET_ENV):
        assert needle in readme, needle
    gpu = yaml.safe_load((K8S / "overlays/gpu-cluster/kustomization.yaml").read_text())["patches"]
    assert any(key in yaml.safe_dump(gpu) for key in vs.GPU_NODE_SELECTOR)  # the services avoid those nodes


# ---------------------------------------------------------------- the multi-node training job


def _pytorchjob() -> dict:
    return one(rendered("overlays/gpu-cluster/training"), "PyTorchJob", "vce-train-multinode")


def _torchrun_split(command: list[str]) -> tuple[list[str], list[str]]:
    """(torchrun's own flags, the program: ``-m vce.cli train ...``) of the job's command."""
    assert command[:3] == ["python", "-m", "torch.distributed.run"], command
    i = command.index("-m", 3)
    return command[3:i], command[i:]


def test_pytorchjob_structure():
    """Kubeflow Training Operator's PyTorchJob (no CRD schema offline): required fields, one
    Master and N-1 Workers with the same pod, the container named `pytorch` on the operator's
    port, M = nprocPerNode = its nvidia.com/gpu request and limit, torchrun fed by the operator's
    variables, `vce train` arguments that vce's own parser accepts, GPU placement, data volume."""
    import pipelines.vce_study as vs
    from vce.cli import build_parser
    from vce.config import load_config

    job = _pytorchjob()
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    assert set(spec) <= {"nprocPerNode", "runPolicy", "pytorchReplicaSpecs", "elasticPolicy"}
    assert spec["runPolicy"]["cleanPodPolicy"] in ("None", "Running", "All") and spec["runPolicy"]["backoffLimit"] >= 1
    reps = spec["pytorchReplicaSpecs"]
    assert set(reps) == {"Master", "Worker"} and reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] >= 1
    assert all(r["restartPolicy"] in ("OnFailure", "Never", "ExitCode") for r in reps.values())
    assert reps["Master"]["template"] == reps["Worker"]["template"]
    pod = reps["Master"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "pytorch"]
    assert {"name": "pytorchjob-port", "containerPort": 23456} in c["ports"]
    m = int(spec["nprocPerNode"])
    assert m >= 1 and int(c["resources"]["limits"]["nvidia.com/gpu"]) == int(c["resources"]["requests"]["nvidia.com/gpu"]) == m
    flags, program = _torchrun_split(c["command"])
    assert flags == ["--nnodes=$(PET_NNODES)", "--node-rank=$(PET_NODE_RANK)", "--nproc-per-node=$(PET_NPROC_PER_NODE)",
                     "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]
    assert program[:3] == ["-m", "vce.cli", "train"]
    a = build_parser().parse_args(program[2:])
    load_config(ROOT / "params.yaml", a.profile).variant(a.variant)  # a variant of that profile
    (data,) = [mt for mt in c["volumeMounts"] if mt["mountPath"] == vs.DATA_MOUNT]  # where the pipeline mounts it
    (vol,) = [v for v in pod["volumes"] if v["name"] == data["name"]]
    assert vol["persistentVolumeClaim"]["claimName"] == vs.DATA_PVC
    for path in (a.params, a.normalized, a.out, a.state_dir):
        assert Path(path).is_relative_to(vs.DATA_MOUNT), path
    assert a.resume and a.tracking_uri == vs.CLUSTER_TRACKING_URI
    assert pod["nodeSelector"] == vs.GPU_NODE_SELECTOR and pod["tolerations"] == vs.GPU_TOLERATIONS
    assert {m_["mountPath"] for m_ in c["volumeMounts"]} >= {"/dev/shm", "/tmp"}
    env = _env(c)
    for key, name in vs.MLFLOW_SECRET_ENV.items():
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": vs.MLFLOW_SECRET, "key": key}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` substitution in a container's command (unknown names stay as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


PROBE = """import json, os, sys
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w").write(json.dumps({k: os.environ[k] for k in keys}))
"""


@pytest.mark.slow  # six Python processes, four of them importing torch: 20-40 s on 2 shared cores
def test_pytorchjob_launcher_flags_form_a_real_two_node_rendezvous(tmp_path):
    """The job's torchrun flags, with the variables the operator sets for 2 nodes x 2 processes
    (PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT) substituted as the
    kubelet does, start two real torchrun agents on loopback that meet and give their 4 workers
    ranks 0..3 of one world of 4. The program is replaced by a probe (vce's training under torchrun
    is tested in test_training/test_faults); no GPU, no cluster."""
    c = _pytorchjob()["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    flags, _ = _torchrun_split(c["command"])
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    port, procs = _free_port(), []
    for node in range(2):
        operator_env = {"PET_NNODES": "2", "PET_NODE_RANK": str(node), "PET_NPROC_PER_NODE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        argv = [sys.executable, "-m", "torch.distributed.run", *(_kubelet_expand(f, operator_env) for f in flags),
                str(probe), str(tmp_path)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | operator_env
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert {s["WORLD_SIZE"] for s in seen} == {"4"} and sorted(s["LOCAL_RANK"] for s in seen) == ["0", "0", "1", "1"]
    assert [s["GROUP_RANK"] for s in seen] == ["0", "0", "1", "1"]  # ranks 0,1 on node 0; 2,3 on node 1


# ---------------------------------------------------------------- allowed hosts, for real


def _get(port: int, host: str, auth: tuple[str, str] | None = None) -> int:
    """GET an MLflow API path on loopback with the given ``Host`` header; the status code."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", "/api/2.0/mlflow/experiments/search?max_results=1", skip_host=True)
    conn.putheader("Host", host)
    if auth:
        conn.putheader("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout} s: {log.read_text()[-3000:]}")


@pytest.mark.slow  # the server starts in 10-70 s on 2 shared cores
def test_allowed_hosts_admit_the_service_name_with_and_without_port_on_a_real_server(tmp_path):
    """A real ``mlflow server`` with the manifest's --allowed-hosts and its basic-auth app (the
    ConfigMap's ini, its user database moved to SQLite in tmp; the backend store SQLite too, for
    this test only): ``Host: mlflow.vce.svc:5000`` and ``mlflow.vce.svc`` are served (200 with the
    admin user, 401 without: auth is on), a foreign host and a wrong port are refused (403)."""
    docs = rendered("overlays/gpu-cluster")
    (c,) = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = _args(c)
    ini = one(docs, "ConfigMap", "mlflow-auth-config")["data"]["basic_auth.ini"]
    ini_path = tmp_path / "basic_auth.ini"
    ini_path.write_text(re.sub(r"database_uri = .*", f"database_uri = sqlite:///{tmp_path / 'auth.db'}", ini))
    port, log = _free_port(), tmp_path / "mlflow.log"
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow), "server", "--app-name=basic-auth", f"--backend-store-uri=sqlite:///{tmp_path / 'mlflow.db'}",
           f"--artifacts-destination={tmp_path / 'artifacts'}", "--host=127.0.0.1", f"--port={port}",
           f"--workers={args['workers']}", f"--allowed-hosts={args['allowed-hosts']}"]
    admin = ("admin", "k8s-test-" + base64.b16encode(os.urandom(8)).decode())
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                        "MLFLOW_AUTH_CONFIG_PATH": str(ini_path), "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
                        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(port, proc, log)
        for host in ("mlflow.vce.svc:5000", "mlflow.vce.svc", "mlflow:5000", "mlflow.vce.svc.cluster.local:5000",
                     f"localhost:{port}"):
            assert _get(port, host, admin) == 200, (host, log.read_text()[-2000:])
        assert _get(port, "mlflow.vce.svc:5000") == 401  # the host passes, the user is still needed
        for host in ("evil.example.com", "evil.example.com:5000", "mlflow.vce.svc:8080", "mlflow.attacker.svc:5000"):
            assert _get(port, host, admin) == 403, host
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _loopback_mlflow(c: dict, ini: str, pg, s3, port: int, tmp_path: Path, admin: tuple[str, str]) -> tuple[list[str], dict]:
    """The rendered MLflow container ``c`` as a local command: its arguments with the Services
    mapped to loopback (``pg``, ``s3``), its literal env, and each secretKeyRef's env var set to
    the local service's credential (the URIs stay without a user)."""
    loopback = {"postgres:5432": f"127.0.0.1:{pg.port}", "http://minio:9000": s3.endpoint}
    ini_path = tmp_path / "basic_auth.ini"
    ini_path.write_text(ini.replace("postgres:5432", loopback["postgres:5432"]))
    args = [a.replace("postgres:5432", loopback["postgres:5432"]) for a in c["args"]
            if not a.startswith(("--host=", "--port="))] + ["--host=127.0.0.1", f"--port={port}"]
    assert not [a for a in args if pg.password in a or "@" in a]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(ini_path), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
            "MLFLOW_S3_ENDPOINT_URL": env["MLFLOW_S3_ENDPOINT_URL"].replace("http://minio:9000", s3.endpoint)}
    secrets = {"PGUSER": pg.user, "PGPASSWORD": pg.password, "AWS_ACCESS_KEY_ID": s3.env["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": s3.env["AWS_SECRET_ACCESS_KEY"], "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
               "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    assert set(secrets) == {e["name"] for e in c["env"] if "valueFrom" in e}  # every secretKeyRef, no more
    return [str(Path(sys.executable).parent / c["command"][0]), *c["command"][1:], *args], env | secrets


@pytest.mark.slow  # PostgreSQL, an S3 server and MLflow start: about a minute on 2 shared cores
def test_the_manifest_mlflow_runs_on_real_postgresql_and_s3_with_credentials_only_from_env(tmp_path, monkeypatch):
    """The rendered MLflow container, its Services mapped to loopback: real PostgreSQL (Debian's,
    tests/services) with the ConfigMap's init SQL, moto's S3 server with the bucket the Job
    creates, the container's arguments and env as written, the Secrets' values given as the env
    vars they map to (PGUSER/PGPASSWORD: the URIs name no user). A client run lands: the run in
    PostgreSQL's `mlflow`, the admin user in `mlflow_auth`, the artifact in the bucket."""
    import mlflow
    import psycopg
    from services import free_port, postgres, s3_server

    docs = rendered("overlays/gpu-cluster")
    (c,) = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    (mc,) = one(docs, "Job", "minio-bucket")["spec"]["template"]["spec"]["containers"]
    bucket = re.search(r"mc mb --ignore-existing vce/([a-z0-9-]+)", mc["command"][-1]).group(1)
    init_sql = "".join(one(docs, "ConfigMap", "postgres-init")["data"].values())
    ini = one(docs, "ConfigMap", "mlflow-auth-config")["data"]["basic_auth.ini"]
    admin = ("admin", "k8s-test-" + os.urandom(8).hex())
    with postgres(database="mlflow", user="mlflow") as pg, s3_server(bucket, tmp_path) as s3:
        with psycopg.connect(host=str(pg.root), port=pg.port, user="postgres", dbname="postgres", autocommit=True) as su:
            su.execute(f"ALTER ROLE {pg.user} CREATEDB")  # the image's POSTGRES_USER is the cluster's owner
        with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password, dbname="mlflow",
                             autocommit=True) as conn:
            conn.execute(init_sql)  # what the image's entrypoint runs on an empty volume
        port = free_port()
        argv, env = _loopback_mlflow(c, ini, pg, s3, port, tmp_path, admin)
        log = tmp_path / "mlflow.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "MLFLOW_"))}
        with log.open("w") as out:
            proc = subprocess.Popen(argv, env=clean | env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(port, proc, log)
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
            client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
            run = client.create_run(client.create_experiment("k8s-manifest"))
            client.log_metric(run.info.run_id, "loss", 0.5)
            (tmp_path / "note.txt").write_text("artifact through the proxy")
            client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        assert [k for k in s3.keys("artifacts/") if k.endswith(f"{run.info.run_id}/artifacts/note.txt")], s3.keys()
        with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password, dbname="mlflow") as db:
            assert db.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'loss'",
                              (run.info.run_id,)).fetchall() == [(0.5,)]
        with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password, dbname="mlflow_auth") as db:
            assert ("admin",) in db.execute("SELECT username FROM users").fetchall()
