"""Training iteration cost: PGMGVCE (ours) vs a pix2pix U-Net + PatchGAN of comparable FLOPs.

Setting (issue 4): 192x192 slices, batch 4, two input modalities (T1, T2), fp32 on CPU with
2 threads; PGMGVCE at the paper profile's ``base_channels`` (``params.yaml``
``profiles.paper.train.base_channels``), sigmoid output, its conditional PatchGAN. The timed
iteration is the trainer's own :meth:`vce.training.step.GanStep.step` for the study's main
variant (``study.main_variant``: lambda_pg = lambda_gan = 1, the paper profile's penalty)::

    fake = G(x); D step: LSGAN + gp_weight * R1; G step: PG + LSGAN; loss report

The reference is :mod:`pix2pix_reference` (U-Net with 6 downsamplings, BatchNorm, 70x70
PatchGAN with ndf 64, LSGAN + 100 L1), with ``ngf`` chosen so that its FLOPs per iteration are
closest to ours (within 30% is required; both are reported).

Reported: FLOPs per iteration (conv/matmul forward + backward of G and D, counted by
``torch.utils.flop_counter`` on the meta device), median seconds per iteration after warm-up,
achieved GFLOP/s, the ratio to the convolution peak measured in the same process, and the
ratios ours / pix2pix of time and GFLOP/s. Short mode: fewer timed iterations at 96x96 (pix2pix
with 5 downsamplings, so its innermost map is 3x3 as at 192 with 6).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PEAK_SHAPES, conv_peak, conv_step, count_flops, gflops, set_threads, time_interleaved  # noqa: E402
from pix2pix_reference import Pix2Pix, pix2pix_iteration  # noqa: E402

from vce.config import Variant, load_config  # noqa: E402
from vce.losses import LossWeights  # noqa: E402
from vce.models.checkpoint import build_from_spec, generator_spec  # noqa: E402
from vce.models.factory import build_discriminator, count_parameters  # noqa: E402
from vce.training.distributed import DistContext  # noqa: E402
from vce.training.precision import Precision  # noqa: E402
from vce.training.step import GanStep  # noqa: E402

IMAGE_SIZE = 192
BATCH = 4
N_MODALITIES = 2
NGF_CANDIDATES = tuple(range(16, 129, 8))
FLOP_TOLERANCE = 0.30


def pgmgvce_step(base: int, image_size: int, device: str = "cpu") -> GanStep:
    """The trainer's own :class:`~vce.training.step.GanStep` for the study's main variant at
    ``base`` channels, with the paper profile's settings (depth, Adam, penalty, ``pg_eps``)."""
    cfg = dataclasses.replace(load_config(profile="paper").train, base_channels=base)
    variant = main_variant()
    G = build_from_spec(generator_spec(variant, cfg)).to(device)
    D = build_discriminator(N_MODALITIES, base, image_size=image_size).to(device)
    dev = torch.device(device)
    step = GanStep(
        G, D, weights=LossWeights(variant.lambda_pg, variant.lambda_gan, variant.lambda_l1), lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2), gp_type=cfg.gp_type, gp_weight=cfg.gp_weight, pg_eps=cfg.pg_eps,
        precision=Precision("off", dev), dist=DistContext(device=dev), name="bench",
    )  # fmt: skip
    G.train()
    D.train()
    return step


def main_variant() -> Variant:
    """The study's main variant (``study.main_variant`` of ``params.yaml``), on T1 + T2."""
    cfg = load_config(profile="paper")
    variant = cfg.variant(cfg.study.main_variant)
    if len(variant.modalities) != N_MODALITIES:
        raise ValueError(f"the benchmark needs a {N_MODALITIES}-modality main variant, got {variant.modalities}")
    return variant


def _inputs(batch: int, size: int, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (0, 1) inputs like sigmoid-normalised slices: x (B, 2, S, S), y (B, 1, S, S)."""
    if device == "meta":
        return torch.empty(batch, N_MODALITIES, size, size, device="meta"), torch.empty(batch, 1, size, size, device="meta")
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, N_MODALITIES, size, size, generator=g), torch.rand(batch, 1, size, size, generator=g)


def pgmgvce_flops(base: int, size: int, batch: int) -> int:
    """FLOPs of one trainer iteration (``GanStep.train_batch`` on the meta device: no arithmetic)."""
    step = pgmgvce_step(base, size, device="meta")
    x, y = _inputs(batch, size, "meta")
    return count_flops(lambda: step.train_batch(x, y))


def pix2pix_flops(ngf: int, size: int, batch: int, ndf: int = 64, num_downs: int = 6) -> int:
    """FLOPs of one pix2pix iteration (meta device)."""
    with torch.device("meta"):
        m = Pix2Pix(N_MODALITIES, 1, num_downs, ngf, ndf)
    x, y = _inputs(batch, size, "meta")
    return count_flops(lambda: pix2pix_iteration(m, x, y))


def choose_ngf(target_flops: int, size: int, batch: int, ndf: int = 64, num_downs: int = 6) -> tuple[int, int]:
    """The ``ngf`` in :data:`NGF_CANDIDATES` whose pix2pix FLOPs per iteration are closest to ``target_flops``.

    Every convolution of the U-Net has ngf-proportional input and/or output channels and the
    discriminator does not depend on ngf, so the count is exactly quadratic in ngf: three counts
    fix the curve, the best candidate is counted again and returned with its exact count.
    """
    pts = (NGF_CANDIDATES[0], NGF_CANDIDATES[len(NGF_CANDIDATES) // 2], NGF_CANDIDATES[-1])
    coef = np.polyfit(pts, [pix2pix_flops(n, size, batch, ndf, num_downs) for n in pts], 2)
    best = min(NGF_CANDIDATES, key=lambda n: abs(np.polyval(coef, n) - target_flops))
    return best, pix2pix_flops(best, size, batch, ndf, num_downs)


def _result(name: str, t: dict[str, float], flops: int, warmup: int, peak: float) -> dict[str, Any]:
    rate = gflops(flops, t["median_s"])
    return {
        "model": name,
        "flops_per_iteration": flops,
        "gflop_per_iteration": flops / 1e9,
        "s_per_iteration": t["median_s"],
        "s_per_iteration_min": t["min_s"],
        "s_per_iteration_max": t["max_s"],
        "timed_iterations": t["repeats"],
        "warmup_iterations": warmup,
        "gflops_per_s": rate,
        "fraction_of_conv_peak": rate / peak,
    }


def run(short: bool, *, image_size: int | None = None, batch: int = BATCH, base: int | None = None,
        num_downs: int | None = None, ndf: int = 64, repeats: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure both models, their iterations alternating (same load on both sides of the ratio).

    Full: 192x192, pix2pix with 6 downsamplings, 6 timed iterations each after 2 warm-up
    (the first iterations allocate and pick kernels: several times slower).
    ``short``: 96x96 with 5 downsamplings (the U-Net's innermost map stays 3x3), 3 timed after 2.
    The keyword arguments override these (the tests use tiny sizes).
    """
    threads = set_threads()
    torch.manual_seed(0)
    cfg = load_config(profile="paper").train
    base = cfg.base_channels if base is None else base
    image_size = image_size or (IMAGE_SIZE // 2 if short else IMAGE_SIZE)
    num_downs = num_downs or (5 if short else 6)
    repeats, warmup = (repeats or 3, 2) if short else (repeats or 6, 2)

    ours_flops = pgmgvce_flops(base, image_size, batch)
    ngf, ref_flops = choose_ngf(ours_flops, image_size, batch, ndf, num_downs)
    peak = conv_peak(repeats=3 if short else 5)

    ours = pgmgvce_step(base, image_size)
    ref = Pix2Pix(N_MODALITIES, 1, num_downs, ngf, ndf)
    ref.train()
    x, y = _inputs(batch, image_size)
    x_ref, y_ref = 2 * x - 1, 2 * y - 1  # pix2pix works on [-1, 1] images
    params_ours = {"generator": count_parameters(ours.G, False), "discriminator": count_parameters(ours.D, False)}
    params_ref = {"generator": count_parameters(ref.netG, False), "discriminator": count_parameters(ref.netD, False)}
    peak_step, peak_flops = conv_step(*PEAK_SHAPES[0], backward=True)
    t = time_interleaved(
        {"pgmgvce": lambda: ours.step(x, y), "pix2pix": lambda: pix2pix_iteration(ref, x_ref, y_ref),
         "conv_peak": peak_step},
        repeats, warmup,
    )  # fmt: skip
    # the peak also measured between the iterations (same load); the best of both is used
    peak["interleaved_gflops_per_s"] = gflops(peak_flops, t["conv_peak"]["min_s"])
    peak["standalone_gflops_per_s"] = peak["gflops_per_s"]
    peak["gflops_per_s"] = max(peak["gflops_per_s"], peak["interleaved_gflops_per_s"])
    res_ours = _result("pgmgvce", t["pgmgvce"], ours_flops, warmup, peak["gflops_per_s"])
    res_ours.update({"params": params_ours, "base_channels": base})
    res_ref = _result("pix2pix", t["pix2pix"], ref_flops, warmup, peak["gflops_per_s"])
    res_ref.update({"params": params_ref, "ngf": ngf, "ndf": ndf, "num_downs": num_downs})
    flop_ratio = ours_flops / ref_flops
    time_ratio = res_ours["s_per_iteration"] / res_ref["s_per_iteration"]
    return {
        "setting": {"image_size": image_size, "batch": batch, "threads": threads, "dtype": "float32",
                    "device": "cpu", "torch": torch.__version__, "short": short},
        "conv_peak": peak,
        "pgmgvce": res_ours,
        "pix2pix": res_ref,
        "ratios": {
            "flops_ours_over_pix2pix": flop_ratio,
            "flops_within_tolerance": abs(flop_ratio - 1) <= FLOP_TOLERANCE,
            "time_ours_over_pix2pix": time_ratio,
            "gflops_ours_over_pix2pix": res_ours["gflops_per_s"] / res_ref["gflops_per_s"],
            "ours_fraction_of_conv_peak": res_ours["fraction_of_conv_peak"],
            "pix2pix_fraction_of_conv_peak": res_ref["fraction_of_conv_peak"],
        },
        "summary": (
            f"{image_size}px b{batch}: PGMGVCE {res_ours['s_per_iteration']:.3f} s/it ({res_ours['gflops_per_s']:.0f} GFLOP/s, "
            f"{res_ours['fraction_of_conv_peak']:.0%} of conv peak {peak['gflops_per_s']:.0f}); pix2pix ngf={ngf} "
            f"{res_ref['s_per_iteration']:.3f} s/it ({res_ref['gflops_per_s']:.0f} GFLOP/s, "
            f"{res_ref['fraction_of_conv_peak']:.0%}); time ours/pix2pix {time_ratio:.2f} at FLOPs ratio {flop_ratio:.2f}"
        ),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--short" in sys.argv), indent=2))
