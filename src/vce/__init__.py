"""Virtual contrast enhancement (VCE) for MRI: the PGMGVCE study as a reproducible pipeline."""

__version__ = "0.1.0"
