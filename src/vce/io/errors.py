"""Errors about bad input. Each names the file (and patient) and says what is wrong."""

from __future__ import annotations


class VCEInputError(ValueError):
    """An input file or directory is missing, unreadable or not what the step needs."""


class VCEEnvironmentError(VCEInputError):
    """The machine cannot do what the step needs (disk full, read-only output, unreachable server).

    Names the path or address and what is wrong; the CLI prints it on one line and exits 2."""
