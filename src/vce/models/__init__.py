"""Generators (PGMGVCE, MMgSN-Net baseline), the PatchGAN discriminator and their factory."""

from vce.models.checkpoint import load_generator
from vce.models.discriminator import PatchDiscriminator
from vce.models.factory import GENERATORS, build_discriminator, build_generator, count_parameters
from vce.models.mmgsn import MMgSNGenerator
from vce.models.pgmgvce import PGMGVCEGenerator

__all__ = [
    "GENERATORS",
    "MMgSNGenerator",
    "PGMGVCEGenerator",
    "PatchDiscriminator",
    "build_discriminator",
    "build_generator",
    "count_parameters",
    "load_generator",
]
