"""Physics-based synthetic MRI cohort (T1-w SE, T2-w SE, post-gadolinium T1 SPGR) with brain tumours.

See docs/synthetic_cohort.md for the model, equations and tissue parameters.
"""

from .cohort import PatientResult, synthesize_cohort, synthesize_patient

__all__ = ["PatientResult", "synthesize_cohort", "synthesize_patient"]
