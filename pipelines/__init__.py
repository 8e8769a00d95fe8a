"""Kubeflow pipelines of the project (wiring only)."""
