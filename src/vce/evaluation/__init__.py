"""Evaluation of the study: every model, and the reference rows, scored the same way.

A *synthesiser* (:mod:`~vce.evaluation.synthesisers`) turns a test patient's registered T1/T2
into a synthetic T1C on the T2 grid, under both inversions: the paper's (the ground truth's own
T1C statistics) and the deployable calibration (T1C statistics predicted from T1/T2). The
trained generators are synthesisers; so are the two references: the **oracle** (the ground
truth taken through exactly the resampling a prediction goes through: the ceiling) and the
**learnability** regressor (:mod:`vce.learnability`: what is predictable from T1/T2 voxel
neighbourhoods without deep learning). :func:`~vce.evaluation.run.evaluate_synthesiser` scores
any of them on the test patients with :func:`vce.metrics.scoring.score_patient`.
"""

from vce.evaluation.run import evaluate_references, evaluate_synthesiser, evaluate_variant

__all__ = ["evaluate_references", "evaluate_synthesiser", "evaluate_variant"]
