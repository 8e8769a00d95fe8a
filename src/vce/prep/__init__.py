"""Data preparation: cohort discovery, registration, slicing and splitting, normalisation."""
