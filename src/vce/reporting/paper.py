"""What the paper (Cheng et al. 2024) prints, for comparison, and the report's tables in its order.

The report shows Table 1 (accuracy), Table 2 (texture), the section 3.2 ablations and an
overview of every variant. Tables 1-2's printed values are here; each ablation's section and
printed values are in its :data:`~vce.reporting.ablations.ABLATIONS` entry.
"""

from __future__ import annotations

from collections.abc import Mapping

from vce.reporting import ablations

MAIN_LABEL = "PGMGVCE"
BASELINE_LABEL = "Li et al. MMgSN-Net"
GT_LABEL = "Ground truth"

TABLE1 = "table1_accuracy"
TABLE2 = "table2_texture"
OVERVIEW = "variants_overview"

# The paper's Tables 1-2, for comparison only: {table: {row: {column: text}}}.
PAPER_REFERENCE: dict[str, dict[str, dict[str, str]]] = {
    TABLE1: {
        "MAE": {MAIN_LABEL: "8.56 ± 0.45", BASELINE_LABEL: "8.72 ± 0.48"},
        "MSE": {MAIN_LABEL: "12.43 ± 0.67", BASELINE_LABEL: "12.81 ± 0.73"},
        "SSIM": {MAIN_LABEL: "0.71 ± 0.08", BASELINE_LABEL: "0.73 ± 0.12"},
    },
    TABLE2: {
        "TMSVPMI": {GT_LABEL: "0.124 ± 0.022", BASELINE_LABEL: "0.079 ± 0.024", MAIN_LABEL: "0.120 ± 0.027"},
        "TAVPMI": {GT_LABEL: "0.159 ± 0.031", BASELINE_LABEL: "0.100 ± 0.032", MAIN_LABEL: "0.153 ± 0.029"},
        "TFPMI": {GT_LABEL: "1.222 ± 0.241", BASELINE_LABEL: "0.981 ± 0.213", MAIN_LABEL: "1.194 ± 0.223"},
        "VFPMI": {GT_LABEL: "0.0811 ± 0.005", BASELINE_LABEL: "0.0667 ± 0.006", MAIN_LABEL: "0.0761 ± 0.006"},
    },
}

PAPER_NOTES: dict[str, str] = {
    TABLE1: (
        "Paper Table 1 as printed. Its abstract gives the two columns the other way round "
        "(Li et al. MAE 8.56, SSIM 0.71; PGMGVCE MAE 8.72, SSIM 0.73). The paper's intensity unit "
        "is not stated, so its MAE/MSE are not directly comparable with ours (12-bit scanner units)."
    ),
    TABLE2: "Paper Table 2 (texture of 2D slices; our VFPMI is computed on intensities / 4095).",
}


def table_order() -> tuple[str, ...]:
    """Table names in report order: Table 1, Table 2, each ablation of ``ABLATIONS``, the overview."""
    return (TABLE1, TABLE2, *(a.table for a in ablations.ABLATIONS), OVERVIEW)


#: Table names in report order (the study's ablations as declared at import).
TABLE_ORDER = table_order()


def reference(name: str) -> tuple[Mapping[str, Mapping[str, str]], str]:
    """The paper's values ``{row: {column: text}}`` and note for table ``name`` (``{}``, ``""`` when none)."""
    for a in ablations.ABLATIONS:
        if a.table == name:
            return a.paper_values, a.paper
    return PAPER_REFERENCE.get(name, {}), PAPER_NOTES.get(name, "")
