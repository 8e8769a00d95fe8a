"""The paper's section 3.2 ablations, declared once, and the roles of the study's variants.

Only the main variant is named; every other role comes from the variants' attributes
relative to it: the baseline is the ``mmgsn`` variant, and an ablation's group holds the
variants equal to main except in that ablation's :attr:`Ablation.fields`.

A new ablation is ONE entry in :data:`ABLATIONS`: :func:`derive_roles` finds its variants,
:func:`vce.reporting.tables.build_tables` builds its table ``ablation_<name>`` (left out when
fewer than two of its variants were evaluated) and the report renders it after the
ablations before it, with the paper's values when the entry has them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vce.config import MODALITIES, NORMALIZATIONS, Variant
from vce.io.errors import VCEInputError
from vce.reporting.loading import ACCURACY
from vce.reporting.stats import add_mean_sd, frame, paired

log = logging.getLogger(__name__)

MODALITY_LABELS = {("T1",): "T1 only", ("T2",): "T2 only", ("T1", "T2"): "T1 + T2"}
_VARIANT_FIELDS = frozenset(f.name for f in dataclasses.fields(Variant)) - {"name"}


def _always(main: Variant) -> bool:
    """True: an ablation that applies to every main variant."""
    return True


@dataclass(frozen=True)
class Ablation:
    """One ablation: the variants that differ from the main variant only in ``fields``.

    ``name`` is the role ("ratio 10:1"), the :class:`Roles` attribute, the table's index name
    and, as ``ablation_<name>``, the table's name. ``title`` and ``description`` head the
    table; ``description`` may name the main variant as ``{main}``. ``label`` gives a member's
    row label and ``order`` its sort key (ties: main first, then by name). ``paper`` says
    where the paper reports the ablation; ``paper_values`` holds its printed values
    ``{row label: {column: "mean ± sd"}}``. With ``relative`` the rows are eq. 14-16 relative
    changes against main, per patient (main's own row left out); otherwise each member's MAE,
    MSE, SSIM. ``applies`` tells whether the ablation is defined for a main variant at all.
    """

    name: str
    fields: frozenset[str]
    title: str
    description: str
    label: Callable[[Variant], str]
    paper: str
    order: Callable[[Variant], Any]
    paper_values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    relative: bool = False
    applies: Callable[[Variant], bool] = _always

    def __post_init__(self) -> None:
        unknown = set(self.fields) - _VARIANT_FIELDS
        if not self.fields or unknown:
            raise ValueError(
                f"ablation {self.name!r}: fields must be a non-empty set of {sorted(_VARIANT_FIELDS)}; unknown: {sorted(unknown)}"
            )

    @property
    def table(self) -> str:
        """The table's name, ``ablation_<name>``."""
        return f"ablation_{self.name}"

    def group(self, variants: Sequence[Variant], main: Variant) -> dict[str, str]:
        """Row label -> variant name of the members, in row order; ``{}`` unless main and one other are there."""
        if not self.applies(main):
            return {}
        members = [v for v in variants if _same_except(v, main, self.fields)]
        members.sort(key=lambda v: (self.order(v), v.name != main.name, v.name))
        out: dict[str, str] = {}
        for v in members:
            lab = self.label(v)
            if lab in out:  # e.g. 2:2 next to 1:1: keep both, tell them apart by name
                lab = f"{lab} ({v.name})"
            out[lab] = v.name
        return out if len(out) >= 2 else {}

    def build(self, group: Mapping[str, str], main: str, data: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        """The ablation's table: one row per member of ``group`` from its per-patient metrics in ``data``."""
        rows = {
            label: (_relative_row if self.relative else _accuracy_row)(name, main, data)
            for label, name in group.items()
            if not (self.relative and name == main)
        }
        return frame(
            rows, self.name, title=self.title, description=self.description.format(main=main), variants=dict(group)
        )


def _same_except(v: Variant, main: Variant, fields: frozenset[str]) -> bool:
    """True when ``v`` equals ``main`` in every attribute but its name and ``fields``."""
    a, b = v.to_dict(), main.to_dict()
    return all(a[k] == b[k] for k in set(a) - {"name"} - fields)


def _accuracy_row(name: str, main: str, data: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """The row of variant ``name``: MAE, MSE, SSIM mean ± sd over its test patients, and n."""
    row: dict[str, Any] = {"variant": name}
    for key, col in ACCURACY:
        add_mean_sd(row, col, data[name][key])
    row["n"] = len(data[name])
    return row


def _relative_row(name: str, main: str, data: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """The row of variant ``name`` against ``main`` (eq. 14-16): MAER, MSER, SSIMR per paired patient, and n."""
    row: dict[str, Any] = {"variant": name}
    n = 0
    for key, col in ACCURACY:
        single, dual = paired(data[name], data[main], key)
        # eq. 14-16, per patient: (metric_single - metric_dual) / metric_dual
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (single - dual) / dual
        add_mean_sd(row, f"{col}R", ratio)
        n = len(single)
    row["n"] = n
    return row


def _fmt_num(x: float) -> str:
    """``x`` in the shortest ``%g`` form (10, 2.5)."""
    return f"{x:g}"


def ratio_label(lambda_pg: float, lambda_gan: float) -> str:
    """``lambda_pg : lambda_gan`` reduced so the smaller side is 1 (10:1, 1:1, 1:10, 2.5:1)."""
    if lambda_pg == 0 and lambda_gan == 0:
        return "0:0"
    if lambda_gan == 0:
        return "1:0"
    if lambda_pg == 0:
        return "0:1"
    r = lambda_pg / lambda_gan
    if r >= 1:
        return f"{_fmt_num(round(r, 6))}:1"
    return f"1:{_fmt_num(round(1 / r, 6))}"


def _accuracy_description(rows: str) -> str:
    """The description of an ablation table of MAE, MSE, SSIM rows; ``rows`` says which rows."""
    return f"MAE, MSE, SSIM for {rows} (other settings as the main variant); mean ± sd over test patients."


#: The study's ablations (paper section 3.2), in report order.
ABLATIONS: tuple[Ablation, ...] = (
    Ablation(
        name="ratio",
        fields=frozenset({"lambda_pg", "lambda_gan"}),
        title="Ablation - pixelwise-gradient : GAN loss ratio",
        description=_accuracy_description("each lambda_pg : lambda_gan"),
        label=lambda v: ratio_label(v.lambda_pg, v.lambda_gan),
        paper="Paper section 3.2.1 (lambda_pg : lambda_gan); SSIM not reported there.",
        paper_values={
            "10:1": {"MAE": "10.517 ± 0.247", "MSE": "14.008 ± 0.284"},
            "1:1": {"MAE": "9.904 ± 0.178", "MSE": "12.866 ± 0.197"},
            "1:10": {"MAE": "10.517 ± 0.231", "MSE": "13.811 ± 0.273"},
        },
        order=lambda v: -(v.lambda_pg / v.lambda_gan) if v.lambda_gan else -math.inf,  # decreasing ratio
    ),
    Ablation(
        name="normalization",
        fields=frozenset({"normalization"}),
        title="Ablation - intensity normalisation",
        description=_accuracy_description("z-score, sigmoid and tanh normalisation"),
        label=lambda v: v.normalization,
        paper="Paper section 3.2.2; SSIM not reported there.",
        paper_values={
            "zscore": {"MAE": "4.222 ± 0.843", "MSE": "4.662 ± 0.918"},
            "sigmoid": {"MAE": "3.814 ± 0.612", "MSE": "4.213 ± 0.726"},
            "tanh": {"MAE": "3.932 ± 0.672", "MSE": "4.175 ± 0.892"},
        },
        order=lambda v: NORMALIZATIONS.index(v.normalization),
    ),
    Ablation(
        name="modality",
        fields=frozenset({"modalities"}),
        title="Ablation - single modality vs T1 + T2 (eq. 14-16)",
        description=(
            "MAER, MSER, SSIMR = (metric with one modality - metric with T1 + T2) / metric with T1 + T2, "
            "computed per test patient against the main variant ({main}), then mean ± sd over the n paired patients."
        ),
        label=lambda v: MODALITY_LABELS.get(v.modalities, " + ".join(v.modalities)),
        paper=(
            "Paper section 3.2.3. By eq. 16 a worse single-modality SSIM gives a negative SSIMR; the "
            "paper reports positive SSIMR values, so compare magnitudes."
        ),
        paper_values={
            "T1 only": {"MAER": "0.456 ± 0.102", "MSER": "0.447 ± 0.146", "SSIMR": "0.283 ± 0.103"},
            "T2 only": {"MAER": "0.389 ± 0.098", "MSER": "0.413 ± 0.161", "SSIMR": "0.241 ± 0.112"},
        },
        order=lambda v: (len(v.modalities), v.modalities),
        relative=True,
        applies=lambda main: main.modalities == MODALITIES,  # eq. 14-16 are relative to the dual-modality model
    ),
)


@dataclass(frozen=True)
class Roles:
    """Which variant plays which part.

    ``groups`` maps each ablation's name to its group (row label -> variant name; ``{}`` when
    the ablation has no table); ``roles.<ablation name>`` (``roles.ratio``) reads one group.
    """

    main: str
    baseline: str | None = None
    groups: Mapping[str, dict[str, str]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> dict[str, str]:
        """The group of the ablation ``name`` (``roles.ratio``); AttributeError for any other name."""
        groups = self.__dict__.get("groups", {})
        if name in groups:
            return groups[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or ablation {name!r}")

    def of(self, name: str) -> str:
        """Human-readable role(s) of a variant ("baseline", "ratio 10:1"; empty when it has none)."""
        if name == self.main:
            return "main"
        out = ["baseline"] if name == self.baseline else []
        for group, members in self.groups.items():
            out += [f"{group} {label}" for label, n in members.items() if n == name]
        return ", ".join(out)


def _baseline(variants: Sequence[Variant], main: str) -> str | None:
    """Name of the first ``mmgsn`` variant other than main (None when there is none)."""
    seed = next((v.seed_offset for v in variants if v.name == main), 0)
    baselines = [v for v in variants if v.model == "mmgsn" and v.name != main and v.seed_offset == seed and v.paper]
    if len(baselines) > 1:
        log.warning("several mmgsn variants %s; using %s as the baseline", [v.name for v in baselines], baselines[0].name)
    return baselines[0].name if baselines else None


def derive_roles(
    variants: Sequence[Variant | dict[str, Any] | str], *, main: str, available: set[str] | None = None
) -> Roles:
    """The :class:`Roles` of ``variants`` relative to the variant named ``main``.

    Only variants in ``available`` (default: all) are considered. An ablation group is empty
    unless it has the main variant and at least one other member. Raises
    :class:`~vce.io.errors.VCEInputError` when ``main`` is not among them.
    """
    variants = [Variant.from_any(v) for v in variants]
    by_name = {v.name: v for v in variants}
    if main not in by_name:
        raise VCEInputError(f"main variant {main!r} is not among the variants {sorted(by_name)}")
    m = by_name[main]
    if available is not None:
        variants = [v for v in variants if v.name in available]
        if main not in available:
            raise VCEInputError(f"main variant {main!r} has no evaluation directory")
    baseline = _baseline(variants, main)
    if m.model != "pgmgvce":
        log.warning("main variant %s is not a pgmgvce model; ablation groups are built around it anyway", main)
    return Roles(main=main, baseline=baseline, groups={a.name: a.group(variants, m) for a in ABLATIONS})
