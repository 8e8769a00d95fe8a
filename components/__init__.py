"""Kubeflow Pipelines components: one per step, each a thin wrapper over ``vce.steps``.

All components run in the project image (``VCE_IMAGE``), which has the ``vce`` package and its
pinned dependencies installed; locally the kfp SubprocessRunner runs them in the current
environment. Configuration travels as the text of ``params.yaml`` plus a profile name, so a
cluster run needs no shared file system for it.
"""

VCE_IMAGE = "ghcr.io/vce-project/vce:0.1.0"
