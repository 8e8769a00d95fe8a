"""MMgSN-Net-style baseline generator (Li et al. 2022, the paper's "model in [22]").

Written from the published description (multimodality-guided synergistic network), not from
the authors' code: per-modality encoders, multi-level *mixed-fusion* blocks that combine the
modalities at every resolution (element-wise sum, product and maximum, concatenated and
convolved together with the previous level's fused features -- after Hi-Net's MFB), a SAGAN-style self-attention block at the bottleneck and a decoder using the fused
features of each level as skip connections. Trained in the study with LSGAN + L1 (variant
``baseline_mmgsn``). Sized to be comparable with :class:`~vce.models.pgmgvce.PGMGVCEGenerator`.

Data flow for ``M`` modalities, base width ``b``::

    per modality: enc0 conv 1->b @S, enc1 conv/2 b->2b @S/2, enc2 conv/2 2b->4b @S/4
    MixedFusion level l (l = 0, 1, 2) on the M encoder features of level l (+ fused level l-1)
    bottleneck: SelfAttention(4b) + residual blocks
    decoder: up x2 + skip fused level 1, up x2 + skip fused level 0, linear head -> 1 channel
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vce.models.pgmgvce import Decoder, ResidualBlock, check_generator_args, conv_block

__all__ = ["ModalityEncoder", "MixedFusionBlock", "SelfAttention", "MMgSNGenerator"]


class ModalityEncoder(nn.Module):
    """Per-modality encoder returning features at S, S/2 and S/4 (b, 2b, 4b channels)."""

    def __init__(self, base_channels: int) -> None:
        super().__init__()
        b = base_channels
        self.enc0 = conv_block(1, b)
        self.enc1 = conv_block(b, 2 * b, stride=2)
        self.enc2 = conv_block(2 * b, 4 * b, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.enc0(x)
        f1 = self.enc1(f0)
        return [f0, f1, self.enc2(f1)]


class MixedFusionBlock(nn.Module):
    """Fuse one level's modality features: ``conv3x3([sum, prod, max, down(previous level)])``.

    The previous level's fused map (if any) is brought to this resolution by a strided conv and
    concatenated with the three element-wise statistics before the fusion conv. With one
    modality the statistics degenerate (sum = max = prod = f), which keeps the same
    architecture for single-modality runs.
    """

    def __init__(self, channels: int, prev_channels: int | None) -> None:
        super().__init__()
        self.prev = None if prev_channels is None else conv_block(prev_channels, channels, stride=2)
        n_in = 3 * channels + (0 if prev_channels is None else channels)
        self.mix = conv_block(n_in, channels)

    def forward(self, feats: list[torch.Tensor], prev: torch.Tensor | None = None) -> torch.Tensor:
        stack = torch.stack(feats, dim=0)
        parts = [stack.sum(dim=0), stack.prod(dim=0), stack.amax(dim=0)]
        if self.prev is not None:
            if prev is None:
                raise ValueError("this fusion level needs the previous level's fused features")
            down = self.prev(prev)
            if down.shape[-2:] != parts[0].shape[-2:]:
                down = nn.functional.interpolate(down, size=parts[0].shape[-2:], mode="bilinear", align_corners=False)
            parts.append(down)
        return self.mix(torch.cat(parts, dim=1))


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): ``x + gamma * softmax(Q^T K) V``, gamma initialised to 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, c')
        k = self.key(x).flatten(2)  # (B, c', N)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class MMgSNGenerator(nn.Module):
    """Baseline generator: ``(B, M, S, S)`` -> ``(B, 1, S, S)`` (linear output)."""

    def __init__(self, n_modalities: int = 2, base_channels: int = 16, n_res_blocks: int = 2) -> None:
        super().__init__()
        check_generator_args(n_modalities, base_channels)
        self.n_modalities = n_modalities
        self.base_channels = base_channels
        b = base_channels
        self.encoders = nn.ModuleList([ModalityEncoder(b) for _ in range(n_modalities)])
        self.fusion = nn.ModuleList(
            [MixedFusionBlock(b, None), MixedFusionBlock(2 * b, b), MixedFusionBlock(4 * b, 2 * b)]
        )
        self.attention = SelfAttention(4 * b)
        self.bottleneck = nn.Sequential(*[ResidualBlock(4 * b) for _ in range(n_res_blocks)])
        self.decoder = Decoder(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.n_modalities:
            raise ValueError(f"expected (B, {self.n_modalities}, S, S) input, got {tuple(x.shape)}")
        per_mod = [enc(x[:, m : m + 1]) for m, enc in enumerate(self.encoders)]
        fused: list[torch.Tensor] = []
        prev = None
        for level, block in enumerate(self.fusion):
            prev = block([feats[level] for feats in per_mod], prev)
            fused.append(prev)
        h = self.bottleneck(self.attention(fused[2]))
        return self.decoder(h, fused[:2])
