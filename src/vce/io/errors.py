"""Errors about bad input. Each names the file (and patient) and says what is wrong."""

from __future__ import annotations


class VCEInputError(ValueError):
    """An input file or directory is missing, unreadable or not what the step needs."""
