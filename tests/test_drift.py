"""The three orchestrators agree: ``dvc.yaml``, the Kubeflow DAG and the ``vce`` CLI.

The shared stages (register, split, normalize, train, evaluate, compare) must

1. be called in ``dvc.yaml`` as ``vce <stage>`` with flags the CLI parser accepts, the ``--out``
   path being the stage's ``outs`` and every other path a ``deps`` entry; the CLI sub-command
   calls ``vce.steps.<stage>``;
2. have one task in the compiled kfp pipeline (``pipelines/vce_study.yaml``, kept up to date with
   the code by ``test_pipeline.py``) whose component calls the same ``vce.steps.<stage>``, with
   the same upstream stages as in ``dvc.yaml``;
3. list in their DVC code ``deps`` every ``vce`` module the step imports, transitively.

``cohort`` (synthesis or a snapshot of the raw cohort) and ``start-study`` (the MLflow parent
run) exist only in kfp; ``synth`` runs outside DVC (its output ``data`` is tracked by data.dvc).
"""

from __future__ import annotations

import ast
import inspect
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SHARED = ("register", "split", "normalize", "train", "evaluate", "reference", "compare")
KFP_ONLY_STEPS = {"synth", "start_study"}  # called by the cohort-op and start-study-op tasks
SRC = ROOT / "src"
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
KFP = next(yaml.safe_load_all((ROOT / "pipelines" / "vce_study.yaml").read_text()))  # the pipeline spec; the kubernetes platform spec follows


def dvc_stage(name: str) -> dict:
    """A stage's body; a ``foreach`` stage's ``do`` template (``${key}`` left as is)."""
    st = DVC[name]
    return st["do"] if "foreach" in st else st


def covers(dep: str, path: str) -> bool:
    """``dep`` (a file or a directory) covers ``path``: equal, or ``path`` lies below it."""
    dep, path = dep.rstrip("/"), path.rstrip("/")
    return path == dep or path.startswith(dep + "/")


# ------------------------------------------------------------------------------------------------
# 1. dvc.yaml <-> CLI


def _steps_calls(tree: ast.AST) -> set[str]:
    """Names ``X`` of the calls ``steps.X(...)`` in ``tree``."""
    return {
        n.func.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name) and n.func.value.id == "steps"
    }


@pytest.mark.parametrize("stage", SHARED)
def test_dvc_cmd_is_a_valid_cli_call(stage):
    from vce.cli import build_parser

    st = dvc_stage(stage)
    argv = shlex.split(st["cmd"])
    assert argv[:2] == ["vce", stage], f"dvc.yaml stage {stage}: cmd should run `vce {stage} ...`, not {argv[:2]}"
    # the template's ${key} stands for a variant name: any string parses
    concrete = [a.replace("${key}", "pgmgvce_main") for a in argv[1:]]
    try:
        args = build_parser().parse_args(concrete)
    except SystemExit:
        pytest.fail(f"dvc.yaml stage {stage}: `{st['cmd']}` is rejected by the vce CLI parser (see stderr)")
    assert args.cmd == stage
    # paths on the command line: --out is the stage's output, every other one an input
    deps, outs = st.get("deps", []), st.get("outs", [])
    for flag, value in zip(argv[2:], argv[3:]):
        if not flag.startswith("--") or value.startswith("-") or value == "${key}":
            continue
        if flag == "--out":
            assert value in outs, f"dvc.yaml stage {stage}: --out {value} is not among its outs {outs}"
        else:
            assert any(covers(d, value) for d in deps), f"dvc.yaml stage {stage}: {flag} {value} is not among its deps"


@pytest.mark.parametrize("stage", SHARED)
def test_cli_subcommand_calls_its_step(stage):
    """``vce <stage>`` runs ``steps.<stage>``: its handler in the CLI's ``COMMANDS`` table when
    there is one, else somewhere in ``cli.py``."""
    import vce.cli as cli

    commands = getattr(cli, "COMMANDS", None)
    src = inspect.getsource(commands[stage] if commands else cli)
    assert stage in _steps_calls(ast.parse(textwrap.dedent(src))), f"vce {stage} does not call vce.steps.{stage}"


def test_dvc_has_the_shared_stages():
    missing = [s for s in SHARED if s not in DVC]
    assert not missing, f"dvc.yaml lacks the stages {missing}"


# ------------------------------------------------------------------------------------------------
# 2. dvc.yaml <-> the kfp DAG


def _dag_tasks() -> dict[str, tuple[str, dict, str | None]]:
    """Every task of the compiled pipeline (nested DAGs such as ParallelFor included):
    ``{task: (component, task spec, enclosing task or None)}``."""
    out: dict[str, tuple[str, dict, str | None]] = {}

    def walk(dag: dict, parent: str | None) -> None:
        for name, t in dag.get("tasks", {}).items():
            comp = t["componentRef"]["name"]
            assert name not in out, f"task name {name} used twice"
            out[name] = (comp, t, parent)
            if "dag" in KFP["components"][comp]:
                walk(KFP["components"][comp]["dag"], name)

    walk(KFP["root"]["dag"], None)
    return out


def _component_source(comp: str) -> str:
    """The python source kfp embeds for a (leaf) component: the last element of its command."""
    label = KFP["components"][comp]["executorLabel"]
    return KFP["deploymentSpec"]["executors"][label]["container"]["command"][-1]


def _leaf_tasks() -> dict[str, set[str]]:
    """``{leaf task: the vce.steps functions its component calls}``."""
    return {
        name: _steps_calls(ast.parse(_component_source(comp)))
        for name, (comp, _, _) in _dag_tasks().items()
        if "executorLabel" in KFP["components"][comp]
    }


def _kfp_stage_of_task() -> dict[str, str]:
    """``{task: shared stage}`` for the tasks calling a shared stage's step."""
    return {t: s for t, calls in _leaf_tasks().items() for s in calls if s in SHARED}


def _producers(task: str, key: str, tasks: dict) -> set[str]:
    """Leaf tasks producing the artifact input ``key`` of ``task`` (through DAG inputs and outputs)."""
    _, spec, parent = tasks[task]
    src = spec.get("inputs", {}).get("artifacts", {})[key]
    if "taskOutputArtifact" in src:
        return _outputs_of(src["taskOutputArtifact"]["producerTask"], src["taskOutputArtifact"]["outputArtifactKey"], tasks)
    if "componentInputArtifact" in src:  # an input of the enclosing DAG: resolve it there
        assert parent is not None
        return _producers(parent, src["componentInputArtifact"], tasks)
    raise AssertionError(f"task {task} input {key}: unexpected source {src}")


def _outputs_of(task: str, key: str, tasks: dict) -> set[str]:
    comp = tasks[task][0]
    dag = KFP["components"][comp].get("dag")
    if dag is None:
        return {task}
    sel = dag["outputs"]["artifacts"][key]["artifactSelectors"]
    return set().union(*(_outputs_of(s["producerSubtask"], s["outputArtifactKey"], tasks) for s in sel))


def test_kfp_has_one_task_per_shared_stage():
    calls = _leaf_tasks()
    for stage in SHARED:
        found = [t for t, c in calls.items() if stage in c]
        assert len(found) == 1, f"kfp DAG: expected one task calling vce.steps.{stage}, found {found}"
    extra = set().union(*calls.values()) - set(SHARED) - KFP_ONLY_STEPS
    assert not extra, f"kfp DAG calls vce.steps.{sorted(extra)}: add them to dvc.yaml and the CLI, or to KFP_ONLY_STEPS"


def test_kfp_and_dvc_wire_the_same_upstream_stages():
    tasks = _dag_tasks()
    stage_of = _kfp_stage_of_task()
    kfp_up: dict[str, set[str]] = {}
    for task, stage in stage_of.items():
        inputs = tasks[task][1].get("inputs", {}).get("artifacts", {})
        producers = set().union(set(), *(_producers(task, k, tasks) for k in inputs))
        kfp_up[stage] = {stage_of[p] for p in producers if p in stage_of}
    dvc_up = {
        s: {u for u in SHARED if u != s and any(covers(d, o) for d in dvc_stage(s).get("deps", []) for o in dvc_stage(u).get("outs", []))}
        for s in SHARED
    }
    assert kfp_up == dvc_up, f"upstream stages differ:\n kfp {kfp_up}\n dvc {dvc_up}"


# ------------------------------------------------------------------------------------------------
# 3. each DVC stage's code deps cover the vce modules its step imports


def module_file(mod: str, src: Path = SRC) -> Path | None:
    """``vce.a.b`` -> ``src/vce/a/b.py`` or ``src/vce/a/b/__init__.py`` (None: not a module here)."""
    base = src.joinpath(*mod.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(node: ast.AST, mod: str, is_pkg: bool, src: Path) -> set[str]:
    """``vce`` modules imported anywhere inside ``node`` (``from P import n``: P, and P.n when n is a module)."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in n.names if module_file(f"{target}.{a.name}", src)}
    return {m for m in found if m.split(".")[0] == "vce" and module_file(m, src)}


def _with_packages(mods: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = (m.split(".") for m in mods)
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}


def step_modules(step: str, src: Path = SRC) -> set[str]:
    """Every ``vce`` module that running ``vce.steps.<step>`` can import: ``vce.steps`` itself (its
    module-level imports, and the imports inside ``step`` and the module's own helpers it calls),
    then everything those modules import anywhere, transitively, package ``__init__``s included."""
    path = module_file("vce.steps", src)
    assert path is not None, f"no vce/steps.py under {src}"
    tree = ast.parse(path.read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert step in funcs, f"vce.steps has no function {step}"
    roots = {"vce.steps"}
    for n in tree.body:
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            roots |= _imports(n, "vce.steps", False, src)
    todo, seen = [step], set()
    while todo:  # the step and the helpers of steps.py it calls
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        roots |= _imports(funcs[f], "vce.steps", False, src)
        todo += [c.func.id for c in ast.walk(funcs[f]) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in funcs]
    done: set[str] = set()
    todo = sorted(_with_packages(roots) - {"vce.steps"})
    while todo:
        m = todo.pop()
        if m in done:
            continue
        done.add(m)
        f = module_file(m, src)
        new = _with_packages(_imports(ast.parse(f.read_text()), m, f.name == "__init__.py", src))
        todo += sorted(new - done - {"vce.steps"})
    return done | _with_packages(roots)


def uncovered(modules: set[str], deps: list[str], src: Path = SRC, root: Path = ROOT) -> list[str]:
    """The files (relative to ``root``) of ``modules`` that no entry of ``deps`` covers."""
    files = sorted(module_file(m, src).relative_to(root).as_posix() for m in modules)
    return [f for f in files if not any(covers(d, f) for d in deps)]


@pytest.mark.parametrize("stage", SHARED)
def test_dvc_code_deps_cover_the_step_imports(stage):
    deps = dvc_stage(stage).get("deps", [])
    missing = uncovered(step_modules(stage), deps)
    assert not missing, f"dvc.yaml stage {stage}: add deps covering {missing} (the step imports them)"


def test_the_coverage_check_catches_a_new_import(tmp_path):
    """A step that gains a ``vce`` import its stage's deps do not cover is reported."""
    pkg = tmp_path / "src" / "vce"
    (pkg / "prep").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("X = 1\n")
    (pkg / "helper.py").write_text("from .config import X\n")
    (pkg / "prep" / "__init__.py").write_text("")
    (pkg / "prep" / "split.py").write_text("def split_cohort():\n    from .. import helper\n")
    (pkg / "steps.py").write_text(
        "from .config import X\n\n\ndef split():\n    from .prep.split import split_cohort\n    return _aux()\n\n\n"
        "def _aux():\n    import vce.new_dependency\n\n\ndef other():\n    from . import unrelated\n"
    )
    (pkg / "new_dependency.py").write_text("")
    (pkg / "unrelated.py").write_text("")
    src = tmp_path / "src"
    mods = step_modules("split", src)
    assert mods == {"vce", "vce.steps", "vce.config", "vce.helper", "vce.prep", "vce.prep.split", "vce.new_dependency"}
    deps = ["src/vce/__init__.py", "src/vce/steps.py", "src/vce/config.py", "src/vce/helper.py", "src/vce/prep"]
    assert uncovered(mods, deps, src, tmp_path) == ["src/vce/new_dependency.py"]
    assert uncovered(mods, [*deps, "src/vce/new_dependency.py"], src, tmp_path) == []
    assert uncovered(mods, ["src/vce"], src, tmp_path) == []
    assert uncovered(mods, ["src/vce/prep/split.py"], src, tmp_path)  # a file dep does not cover its siblings


def test_covers():
    assert covers("src/vce/io", "src/vce/io/atomic.py") and covers("src/vce/io/", "src/vce/io/atomic.py")
    assert not covers("src/vce/io", "src/vce/iox.py") and covers("data", "data")
