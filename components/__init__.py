"""Kubeflow Pipelines components: one per step, each a thin wrapper over ``vce.steps``.

All components run in the project image (:data:`VCE_IMAGE`), which has the ``vce`` package and
its pinned dependencies installed; locally the kfp SubprocessRunner runs them in the current
environment. Configuration travels as the text of ``params.yaml`` plus a profile name, so a
cluster run needs no shared file system for it.

The image is one setting for every component: ``$VCE_IMAGE`` when these modules are first
imported (kfp fixes a component's ``base_image`` when it is decorated), else
:data:`DEFAULT_IMAGE`. To run another image or tag, compile with it, e.g.
``VCE_IMAGE=registry.example.org/vce:0.2.0 python -m pipelines.vce_study``; the committed
``pipelines/vce_study.yaml`` is compiled with the default (a test checks both).
"""

import os

DEFAULT_IMAGE = "ghcr.io/vce-project/vce:0.1.0"
IMAGE_ENV = "VCE_IMAGE"
VCE_IMAGE = os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
#: the image's user and group (the Containerfile's ``VCE_UID``): every cluster task runs as it, non-root
IMAGE_UID = 10001
