"""Typed view of ``params.yaml``: one profile (demo | paper | tiny) plus the study's variants.

Every step reads its section from here, so the CLI, DVC and the Kubeflow pipeline share one
configuration. Unknown keys are errors (a typo must not silently fall back to a default), and
every value is checked here, when the file is loaded: its type from the field's annotation
(an integer for ``int``, a finite number for ``float``, ``true``/``false`` for ``bool``, a list
for ``tuple``), then its range from :data:`RANGES` (one table for every numeric setting) or its
choices from :data:`CHOICES`, then the rules between keys, and ``split.image_size`` against the
halvings of every generator the file can train (:func:`image_size_problem`). A bad
``params.yaml`` therefore fails in seconds at :func:`load_config`, with the key named
(``params.yaml:profiles.demo.train.iterations must be >= 1 (got -5)``), before synthesis or
registration run. The file is read with YAML 1.2's scalar rules (:func:`load_yaml`), the rules
of the ruamel.yaml that ``dvc exp run -S`` rewrites it with: DVC writes ``amp: "off"`` back as
``amp: off`` and ``lr=1e-5`` as ``lr: 1e-05``, which PyYAML's YAML 1.1 rules would read as
``False`` and as the string ``"1e-05"``. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODALITIES = ("T1", "T2")
NORMALIZATIONS = ("zscore", "sigmoid", "tanh", "tanh_f1")  # tanh_f1: eq. 13 with factor 1 (not the paper's)
PAPER_NORMALIZATIONS = ("zscore", "sigmoid", "tanh")  # eq. 11-13 as printed
PG_EPS_SCALES = ("slope", "none")
#: The generators (``Variant.model``); ``vce.models.factory.GENERATORS`` is keyed by these.
MODELS = ("pgmgvce", "mmgsn")
GP_TYPES = ("r1", "wgan_gp")  # train.gp_type
AMP_MODES = ("off", "bf16", "fp16")  # train.amp
KEEP = ("last", "best")  # train.keep
#: study.champion_goal: the registry's champion has the lowest (min) or highest (max) champion_metric.
CHAMPION_GOALS = ("min", "max")

#: One invalid setting: (key within its section, or "" for the section as a whole; message).
Problem = tuple[str, str]


class ConfigError(ValueError):
    """The params file or a variant is invalid."""


class SectionError(ConfigError):
    """Invalid settings of one section; :meth:`located` names them by their place in the file."""

    def __init__(self, where: str, problems: list[Problem]):
        self.problems = problems
        super().__init__(_render(where, problems))

    def located(self, where: str) -> ConfigError:
        return ConfigError(_render(where, self.problems))


def _render(where: str, problems: list[Problem]) -> str:
    return "; ".join(f"{where}.{key} {msg}" if key else f"{where}: {msg}" for key, msg in problems)


def check_int(value: Any, key: str, minimum: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer (not a bool) >= ``minimum``."""
    if not _fits(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum} (got {value!r})")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type of the annotation ``hint`` (lists count as tuples)."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is int:
        return isinstance(value, numbers.Integral)
    if hint is float:
        return isinstance(value, numbers.Real) and math.isfinite(value)
    return isinstance(value, hint)


#: How a value of each annotation is described in errors: (one, many).
_KINDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
          float: ("a finite number", "finite numbers"), str: ("a string", "strings")}


def _describe(hint: Any) -> str:
    """``int`` -> "an integer", ``tuple[int, int]`` -> "a list of 2 integers", ``tuple[str, ...]`` -> "a list of strings"."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        many = _kind(args[0])[1]
        return f"a list of {many}" if len(args) == 2 and args[1] is Ellipsis else f"a list of {len(args)} {many}"
    return _kind(hint)[0]


def _kind(hint: Any) -> tuple[str, str]:
    name = getattr(hint, "__name__", str(hint))
    return _KINDS.get(hint, (f"a {name}", f"{name} values"))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting (of each value of a list setting): ``low <= v``
    (``<`` when ``low_open``) and ``v <= high`` (``<`` when ``high_open``); ``None``: unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above and below

    def text(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``..."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


COUNT = Range(1)  # a count of at least one (iterations, patients, pixels)
COUNT_OR_OFF = Range(0)  # a count where 0 means off / default
POSITIVE = Range(0, low_open=True)  # learning rates, SNRs, spacings, margins
NON_NEGATIVE = Range(0.0)  # loss weights (lambdas), penalties, tolerances
FRACTION = Range(0.0, 1.0, high_open=True)  # a ratio in [0, 1)
OPEN_FRACTION = Range(0.0, 1.0, low_open=True, high_open=True)  # a ratio in (0, 1)
SAMPLING = Range(0.0, 1.0, low_open=True)  # a sampled fraction in (0, 1]

#: The range of every numeric setting, by section then key (list settings: of each value). Types
#: come from the dataclass annotations; ``test_config`` checks that every int / float field is here.
RANGES: dict[str, dict[str, Range]] = {
    "synth": {
        "n_patients": COUNT, "matrix": Range(8), "n_slices": COUNT, "spacing_mm": Range(0, 20, low_open=True),
        "max_rotation_deg": Range(0, 30), "max_translation_mm": Range(0, 50), "max_nonrigid_mm": Range(0, 10),
        "nonrigid_grid_spacing_mm": Range(20, 500), "snr_t1": POSITIVE, "snr_t2": POSITIVE, "snr_t1c": POSITIVE,
    },
    "register": {
        "shrink_factors": COUNT, "smoothing_sigmas_mm": NON_NEGATIVE, "iterations": COUNT, "sampling_fraction": SAMPLING,
        "histogram_bins": Range(2), "bspline_grid_spacing_mm": POSITIVE, "bspline_iterations": COUNT,
        "bspline_shrink_factors": COUNT, "bspline_smoothing_sigmas_mm": NON_NEGATIVE,
        "bspline_sampling_fraction": SAMPLING, "max_tre_mm": POSITIVE, "min_jacobian": Range(high=1.0, high_open=True),
        "max_metric_increase": NON_NEGATIVE,
    },
    "split": {
        "test_ratio": OPEN_FRACTION, "image_size": Range(8), "min_body_fraction": FRACTION, "folds": COUNT_OR_OFF,
        "fold": COUNT_OR_OFF, "max_fov_missing": Range(0.0, 1.0),
    },
    "train": {
        "iterations": COUNT, "batch_size": COUNT, "lr": POSITIVE, "beta1": FRACTION, "beta2": FRACTION,
        "base_channels": COUNT, "gp_weight": NON_NEGATIVE, "pg_eps": POSITIVE, "log_every": COUNT,
        "threads": COUNT_OR_OFF, "checkpoint_every": COUNT_OR_OFF, "val_patients": NON_NEGATIVE, "val_every": COUNT,
        "ema_decay": Range(0, 1, high_open=True), "health_window": COUNT, "d_collapse_loss": NON_NEGATIVE,
        "patience": COUNT, "pgmgvce_depth": Range(1, 6),  # vce.models.pgmgvce.MAX_DEPTH
    },
    "evaluate": {
        "data_range": POSITIVE, "ring_px": COUNT, "enh_threshold": POSITIVE, "edge_quantile": Range(0.0, 0.999),
        "equivalence_margin": POSITIVE, "bootstrap": COUNT, "ci_level": Range(0.5, 0.999),
    },
    "study": {"parallelism": COUNT},
    "variant": {"lambda_pg": Range(0), "lambda_gan": Range(0), "lambda_l1": Range(0), "seed_offset": COUNT_OR_OFF},
}

#: The choices of every string setting that has a fixed set of values, by section then key.
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "register": {"on_failure": ("exclude", "stop")},
    "train": {"gp_type": GP_TYPES, "pg_eps_scale": PG_EPS_SCALES, "amp": AMP_MODES, "keep": KEEP},
    "study": {"champion_goal": CHAMPION_GOALS},
    "variant": {"model": MODELS, "normalization": NORMALIZATIONS},
}

#: A YAML 1.1 reader (``yaml.safe_load``, not :func:`load_yaml`) reads an unquoted ``off`` / ``on``
#: as false / true, and ``dvc exp run -S`` writes ``amp: "off"`` back unquoted: for a string
#: setting whose choices hold the word, a boolean that reaches a config class stands for it.
YAML_BOOL_WORDS = {False: "off", True: "on"}


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 (core schema) booleans and floats, as ruamel.yaml (DVC)
    writes them: only ``true`` / ``false`` are booleans (``off``, ``on``, ``yes``, ``no`` stay
    strings), and a float needs no dot (``1e-05``, ``2E3``; YAML 1.1 reads them as strings)."""


_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ParamsLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# after the int resolver (tried first for the same character), so 4 stays an int
ParamsLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse ``params.yaml`` text with :class:`ParamsLoader` (YAML 1.2 booleans and floats): the
    same values before and after ``dvc exp run -S`` rewrites the file."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass


def _range_problems(cfg: Any, section: str) -> Iterator[Problem]:
    """Every value of ``cfg`` against its :data:`RANGES` entry."""
    for name, rule in RANGES.get(section, {}).items():
        v = getattr(cfg, name)
        if isinstance(v, tuple):
            if not all(x in rule for x in v):
                yield name, f"every value must be {rule.text()} (got {list(v)!r})"
        elif v not in rule:
            yield name, f"must be {rule.text()} (got {v!r})"


def _choice_problems(cfg: Any, section: str) -> Iterator[Problem]:
    """Every string value of ``cfg`` against its :data:`CHOICES` entry."""
    for name, allowed in CHOICES.get(section, {}).items():
        v = getattr(cfg, name)
        if v not in allowed:
            yield name, f"must be one of {allowed} (got {v!r})"


class Checked:
    """Base of the config dataclasses: on construction every field is type-checked against its
    annotation (lists become tuples), then against its :data:`RANGES` / :data:`CHOICES` entry,
    then the section's own :meth:`problems` (rules between keys) are collected; any problem
    raises :class:`SectionError` naming ``<section>.<key>``."""

    section = ""

    def __post_init__(self) -> None:
        problems = list(self._type_problems())
        if not problems:
            problems = [*_range_problems(self, self.section), *_choice_problems(self, self.section), *self.problems()]
        if problems:
            raise SectionError(self.where(), problems)

    def _type_problems(self) -> Iterator[Problem]:
        hints = _hints(type(self))
        choices = CHOICES.get(self.section, {})
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, list):
                v = tuple(v)
                object.__setattr__(self, f.name, v)
            if hints[f.name] is str and isinstance(v, bool) and f.name in choices:
                if YAML_BOOL_WORDS[v] not in choices[f.name]:
                    yield f.name, (f"must be one of {choices[f.name]} (got {v!r}: YAML reads an unquoted "
                                   "on / off / yes / no as true / false; quote the value)")
                    continue
                v = YAML_BOOL_WORDS[v]  # YAML's unquoted off / on
                object.__setattr__(self, f.name, v)
            if not _fits(v, hints[f.name]):
                yield f.name, f"must be {_describe(hints[f.name])} (got {v!r})"

    def where(self) -> str:
        return self.section

    def problems(self) -> Iterator[Problem]:
        return iter(())


@dataclass(frozen=True)
class SynthConfig(Checked):
    section = "synth"

    n_patients: int = 16
    matrix: tuple[int, int] = (96, 96)
    n_slices: int = 16
    spacing_mm: tuple[float, float, float] = (2.2, 2.2, 4.0)
    max_rotation_deg: float = 3.0
    max_translation_mm: float = 3.0
    max_nonrigid_mm: float = 2.0  # peak of the smooth B-spline part of T1/T1C motion (0 = rigid only)
    nonrigid_grid_spacing_mm: float = 60.0  # its control-point spacing (coarse = smooth)
    snr_t1: float = 35.0  # white-matter SNR of the T1-w spin echo (Rician noise sigma = S_WM / snr)
    snr_t2: float = 25.0  # ... of the T2-w spin echo
    snr_t1c: float = 30.0  # ... of the post-contrast 3D spoiled GRE


@dataclass(frozen=True)
class RegisterConfig(Checked):
    """``vce register`` (docs/registration.md): centred rigid, then B-spline, Mattes MI, QC thresholds."""

    section = "register"

    shrink_factors: tuple[int, ...] = (2, 1)  # rigid stage pyramid
    smoothing_sigmas_mm: tuple[float, ...] = (2.0, 0.0)
    iterations: int = 60  # rigid stage, per level
    sampling_fraction: float = 0.15  # rigid stage, random metric samples
    histogram_bins: int = 32
    bspline: bool = True  # B-spline stage after the rigid one
    bspline_grid_spacing_mm: float = 50.0  # control-point spacing (mesh size = extent / spacing)
    bspline_iterations: int = 30  # regular-step gradient descent iterations per level
    bspline_shrink_factors: tuple[int, ...] = (2, 1)
    bspline_smoothing_sigmas_mm: tuple[float, ...] = (2.0, 0.0)
    bspline_sampling_fraction: float = 0.2
    use_mask: bool = True  # metric restricted to the (dilated) body mask of the fixed T2
    parallel_modalities: bool = True  # T1 and T1C in two threads when cores allow
    max_tre_mm: float = 3.0  # flag when the TRE p95 vs the true motion (synthetic only) exceeds this
    min_jacobian: float = 0.0  # flag when the Jacobian determinant min over the body is <= this (folding)
    max_metric_increase: float = 0.0  # flag when Mattes MI after - before exceeds this (lower is better)
    on_failure: str = "exclude"  # exclude (patient left out, listed in excluded.json) | stop (error)
    qc_png: bool = True  # <out>/<pid>/qc.png checkerboard + edge overlay

    def problems(self) -> Iterator[Problem]:
        for prefix in ("", "bspline_"):
            shrink, sigmas = f"{prefix}shrink_factors", f"{prefix}smoothing_sigmas_mm"
            if not getattr(self, shrink):
                yield shrink, "must list at least one level"
            if len(getattr(self, shrink)) != len(getattr(self, sigmas)):
                yield "", f"{shrink} and {sigmas} must have the same length"


@dataclass(frozen=True)
class SplitConfig(Checked):
    section = "split"

    test_ratio: float = 0.125
    image_size: int = 64
    min_body_fraction: float = 0.05
    folds: int = 0  # 0 = hold-out by test_ratio; k >= 2 = k-fold, test = fold `fold`
    fold: int = 0
    max_fov_missing: float = 0.01  # leave out slices where any modality is zero-filled on more than this body fraction

    def problems(self) -> Iterator[Problem]:
        if self.folds == 1:
            yield "folds", "must be 0 (hold-out by test_ratio) or a number of folds >= 2 (got 1)"
        if self.folds >= 2 and self.fold >= self.folds:
            yield "fold", f"must be in [0, {self.folds - 1}] for {self.folds} folds (got {self.fold})"


@dataclass(frozen=True)
class TrainConfig(Checked):
    section = "train"

    iterations: int = 300
    batch_size: int = 8
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    base_channels: int = 16
    gp_weight: float = 0.01
    #: eq. 2's eps. With pg_eps_scale "slope" (default) it is in units of the patient's intensity sd and
    #: multiplied by the normalisation's slope at the patient mean (sigmoid 0.25, tanh 0.005, tanh_f1 0.5,
    #: z-score 1: vce.losses.pg_eps_for), so every normalisation gets the same eps relative to
    #: its tissue contrast; "none": pg_eps in normalised units as given.
    pg_eps: float = 4e-3
    pg_eps_scale: str = "slope"
    log_every: int = 10
    threads: int = 1
    gp_type: str = "r1"  # r1 (penalty on real data) | wgan_gp (on real/fake interpolates, (||grad||-1)^2)
    amp: str = "off"  # off | bf16 | fp16 (fp16 needs CUDA; on CPU it falls back to fp32 with a warning)
    compile: bool = False  # torch.compile the generator (and D when gp_weight == 0)
    checkpoint_every: int = 0  # write a resumable state every N iterations (0 = never)
    val_patients: float = 0  # held-out TRAIN patients: count (>= 1) or fraction (< 1); 0 = no validation
    val_every: int = 100  # validate every N iterations (and at the end)
    keep: str = "last"  # last | best (lowest validation MAE): what checkpoint.pt holds
    ema_decay: float = 0.0  # EMA of generator weights (0 = off); when on, validation and checkpoint use it
    health_window: int = 20  # GAN health: logged rows averaged for the discriminator-collapse check
    d_collapse_loss: float = 0.02  # warn when mean loss_d over health_window rows falls below this
    patience: int = 5  # warn when the generator has not improved for this many validations/log windows
    pgmgvce_depth: int = 2  # halvings in the PGMGVCE feature extractor (image size must be a multiple of 2^depth)

    def problems(self) -> Iterator[Problem]:
        if self.keep == "best" and self.val_patients <= 0:
            yield "", "keep: best needs validation (val_patients > 0)"
        if self.val_patients >= 1 and not float(self.val_patients).is_integer():
            yield "val_patients", f"must be 0, a count >= 1 or a fraction in (0, 1) (got {self.val_patients!r})"


@dataclass(frozen=True)
class EvaluateConfig(Checked):
    section = "evaluate"

    data_range: float = 4095.0
    ring_px: int = 3  # width (pixels, in-plane) of the ring around the tumour for enh_ratio_ring
    enh_threshold: float = 1.3  # enhancing region: intensity >= this x the image's reference level (normal WM, else ring)
    edge_quantile: float = 0.9  # gradient-direction agreement at clean-GT body pixels above this gradient quantile
    equivalence_margin: float = 0.1  # TOST margin for "similar accuracy": +- this fraction of the baseline's mean
    bootstrap: int = 2000  # bootstrap resamples for the 95 % CIs (patients resampled, paired)
    ci_level: float = 0.95


@dataclass(frozen=True)
class StudyConfig(Checked):
    section = "study"

    parallelism: int = 2
    main_variant: str = ""  # the study's main model (tables, ablation reference); must name a variant
    #: the variants this profile runs, by name, from ``variants`` and ``extra_variants`` (empty = all, file order)
    variants: tuple[str, ...] = ()
    #: per-patient score (a column of each variant's metrics_patients.csv, ``_cal`` = the deployable
    #: inversion) whose mean over the test patients picks the registry's ``champion`` (vce.champion)
    champion_metric: str = "mae_body_cal"
    champion_goal: str = "min"  # one of CHAMPION_GOALS: lower or higher champion_metric is better

    def problems(self) -> Iterator[Problem]:
        # the full list of scores lives in vce.metrics (checked by `vce compare`, vce.champion.check_metric);
        # here, without importing it, what can never be one: empty, odd characters, ground truth, ids, counts
        m = self.champion_metric
        if (not m or not m.replace("_", "").isalnum() or m.startswith(("gt_", "gtclean_"))
                or m in ("patient", "n_slices", "n_tumour_voxels")):
            yield "champion_metric", ("must name a score column of metrics_patients.csv such as 'mae_body_cal' "
                                      f"(not ground truth, an id or a count; got {m!r})")


@dataclass(frozen=True)
class Variant(Checked):
    """One training run of the study (a row of the paper's tables)."""

    section = "variant"  # its RANGES / CHOICES entries; errors name it variants.<name>

    name: str
    model: str = "pgmgvce"
    lambda_pg: float = 1.0
    lambda_gan: float = 1.0
    lambda_l1: float = 0.0
    normalization: str = "sigmoid"
    modalities: tuple[str, ...] = ("T1", "T2")
    seed_offset: int = 0  # training seed = profile seed + this (a seed replicate of another variant)
    paper: bool = True  # False: beyond the paper (params.yaml ``extra_variants``), labelled so in every table

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in self.modalities))

    def where(self) -> str:
        return f"variants.{self.name}"

    def problems(self) -> Iterator[Problem]:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            yield "name", f"must be alphanumeric with _ or - (got {self.name!r})"
        mods = self.modalities
        if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
            yield "modalities", f"must be a non-empty subset of {MODALITIES} (got {list(mods)!r})"
        weights = ("lambda_pg", "lambda_gan", "lambda_l1")
        if all(getattr(self, w) == 0 for w in weights):
            yield "", "all generator loss weights are 0, nothing to train"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Variant":
        """A variant from its JSON object (``vce train --variant-json``, the kfp loop items)."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"variant JSON is not valid JSON: {exc}") from None
        return cls.from_any(obj)

    @classmethod
    def from_any(cls, obj: "Variant | dict[str, Any] | str") -> "Variant":
        """A :class:`Variant`, its dict (``to_dict``) or its JSON text (``to_json``)."""
        if isinstance(obj, Variant):
            return obj
        if isinstance(obj, str):
            return cls.from_json(obj)
        if not isinstance(obj, dict):
            raise ConfigError(f"a variant must be a mapping of settings, got {type(obj).__name__}")
        return _build(cls, obj, f"variants.{obj.get('name', '?')}")


@dataclass(frozen=True)
class Config:
    profile: str
    seed: int
    synth: SynthConfig = field(default_factory=SynthConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    variants: tuple[Variant, ...] = ()  # the profile's study (``study.variants``; all when empty)
    #: every variant of the file (``variants`` + ``extra_variants``): any of them can be trained by
    #: name (``vce train --variant``, DVC's stages), whatever the profile's study runs
    catalogue: tuple[Variant, ...] = ()

    def __post_init__(self) -> None:
        where = f"profiles.{self.profile}"
        check_int(self.seed, f"{where}.seed", 0)
        names = [v.name for v in self.variants]
        if names and self.study.main_variant not in names:
            raise ConfigError(f"{where}.study.main_variant must name one of the variants {names} "
                              f"(got {self.study.main_variant!r})")
        models = sorted({v.model for v in (*self.catalogue, *self.variants)} or set(MODELS))
        problem = image_size_problem(self.split.image_size, self.train, models)
        if problem:
            raise ConfigError(f"{where}.split.image_size {problem}")

    def variant(self, name: str) -> Variant:
        """The variant ``name``: of the study, else of the file's catalogue."""
        for v in (*self.variants, *self.catalogue):
            if v.name == name:
                return v
        known = list(dict.fromkeys(v.name for v in (*self.variants, *self.catalogue)))
        raise ConfigError(f"no variant named {name!r}; known: {known}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variants"] = [v.to_dict() for v in self.variants]
        d.pop("catalogue", None)
        return d


#: How many times each generator (``Variant.model``) halves the image side: PGMGVCE has
#: ``train.pgmgvce_depth`` stride-2 convolutions (vce.models.pgmgvce), MMgSN-Net two max-poolings
#: (three levels, vce.models.mmgsn). A key of TrainConfig, or a fixed count.
GENERATOR_HALVINGS: dict[str, str | int] = {"pgmgvce": "pgmgvce_depth", "mmgsn": 2}


def image_size_problem(size: int, train: TrainConfig, models: list[str]) -> str | None:
    """Why slices of ``size`` x ``size`` pixels cannot train every generator in ``models``, or ``None``.

    A generator that halves the side ``h`` times needs a multiple of ``2^h`` that leaves at least
    2 x 2 pixels at the bottom (``vce.models.blocks.check_image_size``; InstanceNorm needs more
    than one pixel). The PatchGAN discriminator fits any size >= 8 (``split.image_size``'s range).
    """
    for model in models:
        spec = GENERATOR_HALVINGS[model]
        halvings = getattr(train, spec) if isinstance(spec, str) else spec
        why = f"train.{spec} = {halvings}" if isinstance(spec, str) else "its fixed architecture"
        f = 2**halvings
        if size % f or size // f < 2:
            lo, hi = max(2, size // f) * f, max(2, size // f + 1) * f
            fits = f"{lo} or {hi}" if lo != hi and lo != size else f"{hi}"
            return (f"must be a multiple of {f} and at least {2 * f} (got {size}): the {model} generator halves "
                    f"it {halvings} times ({why}); e.g. {fits} would work")
    return None


SECTIONS: dict[str, type] = {
    "synth": SynthConfig,
    "register": RegisterConfig,
    "split": SplitConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "study": StudyConfig,
}


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(raw).__name__}")
    return dict(raw)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    """``cls(**raw)``; unknown or missing keys and invalid values are a :class:`ConfigError` at ``where``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        return cls(**raw)
    except SectionError as exc:
        raise exc.located(where) from None
    except TypeError as exc:  # missing required key
        raise ConfigError(f"{where}: {exc}") from exc


def default_params_path() -> Path:
    """``params.yaml`` in the current directory, else the one at the repository root."""
    here = Path("params.yaml")
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / "params.yaml"


def load_config(path: str | Path | None = None, profile: str | None = None) -> Config:
    """Read ``params.yaml`` and return the chosen profile as a :class:`Config`.

    ``profile`` defaults to the file's top-level ``profile`` key.
    """
    path = Path(path) if path else default_params_path()
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    return load_config_text(path.read_text(), profile, source=str(path))


def load_config_text(text: str, profile: str | None = None, source: str = "params") -> Config:
    """Like :func:`load_config`, from the YAML text itself (how the Kubeflow components get it)."""
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles"), dict):
        raise ConfigError(f"{source}: expected a mapping with a 'profiles' mapping")
    profile = profile or raw.get("profile") or "demo"
    profiles = raw["profiles"]
    if profile not in profiles:
        raise ConfigError(f"{source}: no profile {profile!r}; known: {sorted(profiles)}")
    where = f"{source}:profiles.{profile}"
    p = _mapping(profiles[profile], where)
    unknown = set(p) - set(SECTIONS) - {"seed"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}")
    built = {k: _build(c, _mapping(p.get(k), f"{where}.{k}"), f"{where}.{k}") for k, c in SECTIONS.items()}
    catalogue = _variants(raw, source)
    variants = _select(catalogue, tuple(built["study"].variants), where)
    try:
        return Config(profile=profile, seed=p.get("seed", 0), variants=variants, catalogue=catalogue, **built)
    except ConfigError as exc:
        raise ConfigError(f"{source}:{exc}") from None


def _variants(raw: dict[str, Any], source: str) -> tuple[Variant, ...]:
    """The file's ``variants`` (the paper's) then ``extra_variants`` (beyond the paper: ``paper``
    is false for them), each a mapping name -> settings, in file order."""
    out: list[Variant] = []
    for key, paper in (("variants", True), ("extra_variants", False)):
        for k, v in _mapping(raw.get(key), f"{source}:{key}").items():
            where = f"{source}:{key}.{k}"
            d = _mapping(v, where)
            if "paper" in d:
                raise ConfigError(f"{where}: 'paper' is set by the section (variants: the paper's, extra_variants: not)")
            out.append(_build(Variant, {"name": k, **d, "paper": paper}, where))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: variant name(s) {dup} appear more than once in variants / extra_variants")
    return tuple(out)


def _select(variants: tuple[Variant, ...], wanted: tuple[str, ...], where: str) -> tuple[Variant, ...]:
    """The variants named in ``study.variants`` (in file order); all when it is empty."""
    if not wanted:
        return variants
    known = {v.name for v in variants}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(f"{where}.study.variants: unknown variant(s) {unknown}; known: {sorted(known)}")
    return tuple(v for v in variants if v.name in set(wanted))
