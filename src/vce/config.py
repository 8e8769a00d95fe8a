"""Typed view of ``params.yaml``: one profile (demo | paper | tiny) plus the study's variants.

Every step reads its section from here, so the CLI, DVC and the Kubeflow pipeline share one
configuration. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODALITIES = ("T1", "T2")
NORMALIZATIONS = ("zscore", "sigmoid", "tanh")
MODELS = ("pgmgvce", "mmgsn")


class ConfigError(ValueError):
    """The params file or a variant is invalid."""


@dataclass(frozen=True)
class SynthConfig:
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
class RegisterConfig:
    """``vce register`` (docs/registration.md): centred rigid, then B-spline, Mattes MI, QC thresholds."""

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

    def __post_init__(self) -> None:
        if self.on_failure not in ("exclude", "stop"):
            raise ConfigError(f"register.on_failure must be 'exclude' or 'stop', got {self.on_failure!r}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm):
            raise ConfigError("register.shrink_factors and smoothing_sigmas_mm must have the same length")
        if len(self.bspline_shrink_factors) != len(self.bspline_smoothing_sigmas_mm):
            raise ConfigError("register.bspline_shrink_factors and bspline_smoothing_sigmas_mm must have the same length")
        if self.bspline_grid_spacing_mm <= 0:
            raise ConfigError(f"register.bspline_grid_spacing_mm must be > 0, got {self.bspline_grid_spacing_mm!r}")


@dataclass(frozen=True)
class SplitConfig:
    test_ratio: float = 0.125
    image_size: int = 64
    min_body_fraction: float = 0.05
    folds: int = 0  # 0 = hold-out by test_ratio; k >= 2 = k-fold, test = fold `fold`
    fold: int = 0


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 300
    batch_size: int = 8
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    base_channels: int = 16
    gp_weight: float = 0.01
    pg_eps: float = 1e-3
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


@dataclass(frozen=True)
class EvaluateConfig:
    data_range: float = 4095.0


@dataclass(frozen=True)
class StudyConfig:
    parallelism: int = 2


@dataclass(frozen=True)
class Variant:
    """One training run of the study (a row of the paper's tables)."""

    name: str
    model: str = "pgmgvce"
    lambda_pg: float = 1.0
    lambda_gan: float = 1.0
    lambda_l1: float = 0.0
    normalization: str = "sigmoid"
    modalities: tuple[str, ...] = ("T1", "T2")

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"variant name {self.name!r} must be alphanumeric with _ or -")
        if self.model not in MODELS:
            raise ConfigError(f"variant {self.name}: model must be one of {MODELS}, got {self.model!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"variant {self.name}: normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        mods = tuple(self.modalities)
        if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
            raise ConfigError(f"variant {self.name}: modalities must be a non-empty subset of {MODALITIES}")
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in mods))
        if min(self.lambda_pg, self.lambda_gan, self.lambda_l1) < 0:
            raise ConfigError(f"variant {self.name}: loss weights must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_any(cls, obj: "Variant | dict[str, Any] | str") -> "Variant":
        if isinstance(obj, Variant):
            return obj
        if isinstance(obj, str):
            obj = json.loads(obj)
        return _build(cls, dict(obj), "variant")


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
    variants: tuple[Variant, ...] = ()

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(f"no variant named {name!r}; known: {[v.name for v in self.variants]}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variants"] = [v.to_dict() for v in self.variants]
        return d


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    kwargs = {}
    for k, v in raw.items():
        if isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
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
    path = source
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or "profiles" not in raw:
        raise ConfigError(f"{path}: expected a mapping with a 'profiles' key")
    profile = profile or raw.get("profile") or "demo"
    profiles = raw["profiles"]
    if profile not in profiles:
        raise ConfigError(f"{path}: no profile {profile!r}; known: {sorted(profiles)}")
    p = dict(profiles[profile])
    where = f"{path}:profiles.{profile}"
    sections = {
        "synth": SynthConfig,
        "register": RegisterConfig,
        "split": SplitConfig,
        "train": TrainConfig,
        "evaluate": EvaluateConfig,
        "study": StudyConfig,
    }
    unknown = set(p) - set(sections) - {"seed"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}")
    built = {k: _build(c, dict(p.get(k) or {}), f"{where}.{k}") for k, c in sections.items()}
    raw_variants = raw.get("variants") or {}
    if not isinstance(raw_variants, dict):
        raise ConfigError(f"{path}: 'variants' must be a mapping of name -> settings")
    variants = tuple(_build(Variant, {"name": k, **dict(v)}, f"{path}:variants.{k}") for k, v in raw_variants.items())
    return Config(profile=profile, seed=int(p.get("seed", 0)), variants=variants, **built)
