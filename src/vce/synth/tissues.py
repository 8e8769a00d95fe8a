"""Tissue parameters at 3 T and gadolinium relaxivity (sources in docs/synthetic_cohort.md).

Every compartment of the simulated head has a longitudinal and transverse relaxation time
(T1, T2 in ms), a relative proton density PD (CSF = 1) and the gadolinium concentration C (mM)
it holds when the post-contrast T1C scan is acquired (standard 0.1 mmol/kg dose, a few minutes
after injection). Per patient, every value is varied by a few percent (biological variability);
the contrast-agent concentrations are additionally scaled by a per-patient dose/timing factor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

#: Longitudinal / transverse relaxivity of gadobutrol at 3 T, 37 degC, in 1/(ms mM).
#: r1 in human plasma 4.97 and in whole blood 3.47 L/(mmol s) (Szomolanyi et al., Invest Radiol 2019);
#: r2 in plasma ~7.1 L/(mmol s) (Rohrer et al., Invest Radiol 2005). Tissue uses the plasma values
#: (fast water exchange assumed), blood uses the blood r1.
R1_TISSUE = 4.97e-3
R2_TISSUE = 7.1e-3
R1_BLOOD = 3.47e-3
R2_BLOOD = 7.1e-3

#: Plasma concentration (mM) of gadolinium a few minutes after a 0.1 mmol/kg bolus (population AIF
#: of Parker et al., MRM 2006: ~1 mM blood, plasma ~ blood / (1 - Hct)); tissue concentrations below
#: are C_t = v_p C_p + v_e C_e with C_e -> C_p in leaky tissue (Tofts model).
PLASMA_GD_MM = 1.0


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters of one compartment at 3 T."""

    name: str
    t1_ms: float
    t2_ms: float
    pd: float
    gd_mM: float  # concentration at the time of the T1C scan (standard dose)
    flow_void: float = 1.0  # spin-echo signal factor of flowing blood (1 = static tissue)
    is_blood: bool = False
    source: str = ""

    def relaxation(
        self, conc_mM: float | np.ndarray = 0.0, t1_ms: np.ndarray | None = None, t2_ms: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(T1', T2') in ms with ``conc_mM`` of gadolinium: 1/T' = 1/T + r C; ``t1_ms`` / ``t2_ms``
        (per-voxel arrays) replace the compartment's own T1 / T2."""
        r1, r2 = (R1_BLOOD, R2_BLOOD) if self.is_blood else (R1_TISSUE, R2_TISSUE)
        c = np.asarray(conc_mM, dtype=np.float64)
        t1 = self.t1_ms if t1_ms is None else np.asarray(t1_ms)
        t2 = self.t2_ms if t2_ms is None else np.asarray(t2_ms)
        return 1.0 / (1.0 / t1 + r1 * c), 1.0 / (1.0 / t2 + r2 * c)


def _t(name, t1, t2, pd, c, source, flow_void=1.0, is_blood=False) -> Tissue:
    return Tissue(name, float(t1), float(t2), float(pd), float(c), float(flow_void), is_blood, source)


#: Reference tissue table (3 T). ``gd_mM`` is the tissue concentration at the T1C scan.
TISSUES: dict[str, Tissue] = {
    t.name: t
    for t in (
        _t("wm", 1084, 69, 0.69, 0.011, "Stanisz 2005 (T1,T2); Tofts 2003 (PD); C = v_p C_p, v_p ~ 0.011"),
        _t("gm", 1820, 99, 0.80, 0.022, "Stanisz 2005 (T1,T2); Tofts 2003 (PD); C = v_p C_p, v_p ~ 0.022"),
        _t("csf", 4300, 2000, 1.00, 0.0, "Lu 2005 (T1 ~4.3 s); T2 ~2 s (water-like); PD = 1 by definition"),
        _t("dura", 1100, 55, 0.60, 0.45, "fibrous tissue (assumed); no blood-brain barrier: v_e + v_p ~ 0.45"),
        _t("bone", 250, 0.5, 0.15, 0.0, "cortical bone: T2* ~0.4-0.5 ms, water ~15 % (Du 2011; Techawiboonwong 2008)"),
        _t("marrow", 550, 50, 0.70, 0.08, "fatty (diploic) marrow, approx. de Bazelaire 2004"),
        _t("muscle", 1412, 50, 0.80, 0.12, "Stanisz 2005 skeletal muscle; v_e ~ 0.1, v_p ~ 0.02"),
        _t("fat", 382, 68, 0.90, 0.03, "de Bazelaire 2004 subcutaneous fat"),
        _t("skin", 1000, 40, 0.70, 0.15, "dermis (assumed, muscle-like); v_e ~ 0.15"),
        _t(
            "choroid", 1500, 110, 0.85, 0.45,
            "choroid plexus (assumed: vascular stroma, T1/T2 between GM and CSF); fenestrated capillaries, "
            "no blood-brain barrier: v_p + v_e ~ 0.45",
        ),
        _t(
            "mucosa", 1500, 120, 0.85, 0.40,
            "sinus mucosa (assumed: oedematous, water-rich: T2-bright); highly vascular: v_p + v_e ~ 0.4",
        ),
        _t(
            "artery", 1932, 275, 0.85, 0.58, "Stanisz 2005 blood; C_b = C_p (1 - Hct)", flow_void=0.15, is_blood=True
        ),
        _t("sinus", 1932, 275, 0.85, 0.58, "venous sinus blood, slower flow", flow_void=0.4, is_blood=True),
        _t(
            "enhancing", 1550, 95, 0.82, 0.40,
            "enhancing viable tumour (assumed values; ordering WM < tumour < oedema in T1/T2 as in Blystad 2017 "
            "synthetic MRI and Badve 2017 MRF); leaky: v_e ~0.4",
        ),
        _t(
            "nonenhancing", 1750, 125, 0.85, 0.04,
            "non-enhancing (infiltrative) tumour (assumed: between enhancing tumour and oedema); intact barrier",
        ),
        _t("necrosis", 2800, 260, 0.93, 0.03, "necrotic core, fluid-like, slow contrast diffusion"),
        _t("oedema", 1850, 140, 0.86, 0.03, "vasogenic oedema (Blystad 2017): long T1/T2, BBB mostly intact"),
    )
}

#: Label values of the dominant compartment per voxel (maps returned for tests / QA).
LABELS: tuple[str, ...] = ("air",) + tuple(TISSUES)


@dataclass(frozen=True)
class PatientTissues:
    """One patient's tissue table (reference values varied) and contrast-dose factor."""

    tissues: dict[str, Tissue]
    dose_factor: float

    def __getitem__(self, name: str) -> Tissue:
        return self.tissues[name]

    def table(self) -> dict[str, dict[str, float]]:
        return {
            k: {"t1_ms": t.t1_ms, "t2_ms": t.t2_ms, "pd": t.pd, "gd_mM": t.gd_mM} for k, t in self.tissues.items()
        }


def sample_patient_tissues(rng: np.random.Generator, variation: float = 0.04) -> PatientTissues:
    """Vary T1, T2, PD of every tissue by ``variation`` (log-normal sd) and draw a dose factor.

    The dose factor (uniform 0.8-1.2) models weight-based dosing and injection-to-scan delay; it
    scales every concentration.
    """
    if variation < 0:
        raise ValueError(f"variation must be >= 0, got {variation}")
    dose = float(rng.uniform(0.8, 1.2))
    out = {}
    for name, t in TISSUES.items():
        f = np.exp(rng.normal(0.0, variation, size=4))
        out[name] = dataclasses.replace(
            t,
            t1_ms=round(t.t1_ms * float(f[0]), 3),
            t2_ms=round(t.t2_ms * float(f[1]), 3),
            pd=round(min(1.0, t.pd * float(f[2])), 4),
            gd_mM=round(t.gd_mM * dose * float(f[3]), 4),
        )
    return PatientTissues(out, round(dose, 4))


def tissue_table() -> dict[str, dict[str, object]]:
    """Reference table for cohort.json."""
    return {
        k: {
            "t1_ms": t.t1_ms,
            "t2_ms": t.t2_ms,
            "pd": t.pd,
            "gd_mM": t.gd_mM,
            "flow_void_se": t.flow_void,
            "source": t.source,
        }
        for k, t in TISSUES.items()
    }
