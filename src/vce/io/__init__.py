"""Input/output: atomic writes, NIfTI volumes, patient directories."""
