"""MMgSN-Net baseline generator (Li et al. 2022, the paper's "model in [22]"), re-implemented.

Written from the published description of the multimodality-guided synergistic neural network
(and the structure of its public PyTorch implementation, which extends Hi-Net, Zhou et al.
2020), not copied. Its components, each one module here (``M`` modalities, base width ``b``,
three levels ``l = 0, 1, 2`` at ``S / 2^l`` with widths ``c_l = b * 2^l``)::

    Multimodality learning module: one ModalityEncoder per modality,
        level 0: conv3x3 1->c_0                                       (B, c_0, S, S)
        level l: maxpool/2, concat synergistic guidance, conv3x3 -> c_l (B, c_l, S/2^l, S/2^l)
    Synergistic guidance: the fused features of level l-1 (maxpooled) are concatenated to every
        modality's input of level l, so each encoder is guided by the other modalities.
    Multi-level mixed fusion: MixedFusionBlock per level on the M encoder maps:
        conv3x3([sum_m f_m, prod_m f_m, max_m f_m]) (3 c_l -> c_l), then (l >= 1) with the
        previous level's fused map: conv3x3(concat) (2 c_l -> c_l)   (B, c_l, S/2^l, S/2^l)
    Bottleneck: conv3x3 c_2 -> 2 c_2 -> conv3x3 -> c_2 at S/4
    Decoder: at each level a MixedFusionBlock mixes the M encoder maps of that level with the
        (upsampled) decoder features: S/4 -> c_1, S/2 -> c_0, S -> c_0
    Self-attention module: SAGAN attention x + gamma softmax(Q^T K) V on the decoder features at
        ``attention_scale`` (default S/4; the public code uses S/2, see docs/models.md)
    Multi-level output: concat(decoder output at S, the other decoder levels upsampled to S)
        -> 1x1 conv -> 1 channel, linear (B, 1, S, S)

The discriminator is the shared conditional PatchGAN (``discriminator.py``); training uses LSGAN
+ 100 * L1 (variant ``baseline_mmgsn``), as the public implementation does.

With one modality the mixed-fusion statistics degenerate (sum = prod = max = f), which keeps the
same architecture for single-modality runs. ``S`` must be a multiple of 4 (two halvings) and at
least 8; other sizes raise ValueError.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vce.models.blocks import check_generator_args, check_image_size, conv_block

__all__ = ["ModalityEncoder", "MixedFusionBlock", "SelfAttention", "MultiLevelOutput", "MMgSNGenerator"]

N_LEVELS = 3  # resolutions S, S/2, S/4 (as in the public implementation)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2:] == like.shape[-2:] else F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ModalityEncoder(nn.Module):
    """Multimodality learning module for one modality, with synergistic guidance.

    ``forward_level(l, prev, guide)``: level 0 takes the slice ``(B, 1, S, S)``; level ``l >= 1``
    takes its own level ``l-1`` map and the fused level ``l-1`` map (both ``(B, c_{l-1}, ...)``),
    maxpools them and returns ``(B, c_l, S/2^l, S/2^l)``.
    """

    def __init__(self, base_channels: int) -> None:
        super().__init__()
        c = [base_channels * 2**l for l in range(N_LEVELS)]
        self.levels = nn.ModuleList(
            [conv_block(1, c[0])] + [conv_block(2 * c[l - 1], c[l]) for l in range(1, N_LEVELS)]
        )

    def forward_level(self, level: int, prev: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if level == 0:
            return self.levels[0](prev)
        if guide is None:
            raise ValueError("levels >= 1 need the fused features of the previous level (synergistic guidance)")
        return self.levels[level](torch.cat([_pool(prev), _pool(guide)], dim=1))


class MixedFusionBlock(nn.Module):
    """Mix ``M`` modality maps ``(B, C, h, w)`` by element-wise sum, product and maximum.

    ``mix = conv3x3(concat[sum, prod, max])`` (``3C -> C_out``); with ``context`` (the previous
    fused level, or the decoder features; any size, resized to ``h x w``, ``C_ctx`` channels) the
    result is ``conv3x3(concat[mix, context])`` (``C_out + C_ctx -> C_out``), otherwise ``mix``.
    Output ``(B, C_out, h, w)``.
    """

    def __init__(self, channels: int, out_channels: int, context_channels: int = 0, act: str = "lrelu") -> None:
        super().__init__()
        self.context_channels = context_channels
        self.mix = conv_block(3 * channels, out_channels, act=act)
        self.merge = conv_block(out_channels + context_channels, out_channels, act=act) if context_channels else None

    def forward(self, feats: list[torch.Tensor], context: torch.Tensor | None = None) -> torch.Tensor:
        stack = torch.stack(feats, dim=0)
        mixed = self.mix(torch.cat([stack.sum(dim=0), stack.prod(dim=0), stack.amax(dim=0)], dim=1))
        if self.merge is None:
            return mixed
        if context is None:
            raise ValueError("this mixed-fusion block needs a context map")
        return self.merge(torch.cat([mixed, _resize(context, mixed)], dim=1))


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019) over the ``N = h w`` positions of ``(B, C, h, w)``.

    ``attention(x)`` is the row-stochastic ``(B, N, N)`` matrix ``softmax(Q^T K)`` (``Q, K``: 1x1
    convs to ``C/8`` channels); the output is ``x + gamma * V attention^T`` with ``gamma`` a learnt
    scalar initialised to 0 (so the block starts as the identity). Memory ``O(B N^2)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        return torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N, N), rows sum to 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        v = self.value(x).flatten(2)  # (B, C, N)
        out = torch.bmm(v, self.attention(x).transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class MultiLevelOutput(nn.Module):
    """Concat the full-resolution decoder map with the other decoder levels upsampled to ``S``, 1x1 conv -> 1.

    Maps ``[(B, C_i, h_i, w_i)]`` (the first at full size) -> ``(B, 1, S, S)``, linear.
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.out = nn.Conv2d(sum(channels), 1, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        full = maps[0]
        return self.out(torch.cat([full, *(_resize(m, full) for m in maps[1:])], dim=1))


class MMgSNGenerator(nn.Module):
    """Baseline generator: ``(B, M, S, S)`` -> ``(B, 1, S, S)`` (linear output).

    ``attention_scale``: downsampling factor (2 or 4) of the decoder level that carries the
    self-attention module; 4 (default) keeps its ``O((S/4)^4)`` memory small at 192x192.
    """

    def __init__(self, n_modalities: int = 2, base_channels: int = 16, attention_scale: int = 4) -> None:
        super().__init__()
        check_generator_args(n_modalities, base_channels)
        if attention_scale not in (2, 4):
            raise ValueError(f"attention_scale must be 2 or 4, got {attention_scale}")
        self.n_modalities = n_modalities
        self.base_channels = base_channels
        self.attention_scale = attention_scale
        c = [base_channels * 2**l for l in range(N_LEVELS)]
        self.c = c
        self.encoders = nn.ModuleList([ModalityEncoder(base_channels) for _ in range(n_modalities)])
        self.fusion = nn.ModuleList(
            [MixedFusionBlock(c[0], c[0])] + [MixedFusionBlock(c[l], c[l], c[l - 1]) for l in range(1, N_LEVELS)]
        )
        self.bottleneck = nn.Sequential(conv_block(c[2], 2 * c[2]), conv_block(2 * c[2], c[2]))
        # decoder: level 2 (S/4) -> c_1, level 1 (S/2) -> c_0, level 0 (S) -> c_0
        dec_out = [c[0], c[0], c[1]]
        dec_ctx = [dec_out[1], dec_out[2], c[2]]
        self.decoder = nn.ModuleList(
            [MixedFusionBlock(c[l], dec_out[l], dec_ctx[l], act="relu") for l in range(N_LEVELS)]
        )
        att_level = {2: 1, 4: 2}[attention_scale]
        self.attention_level = att_level
        self.attention = SelfAttention(dec_out[att_level])
        self.output = MultiLevelOutput(dec_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, self.n_modalities, N_LEVELS - 1, "MMgSN-Net")
        # multimodality learning module with synergistic guidance, multi-level mixed fusion
        feats: list[list[torch.Tensor]] = []  # feats[l][m]: (B, c_l, S/2^l, S/2^l)
        fused: list[torch.Tensor] = []
        for level in range(N_LEVELS):
            if level == 0:
                per_mod = [enc.forward_level(0, x[:, m : m + 1]) for m, enc in enumerate(self.encoders)]
                fused.append(self.fusion[0](per_mod))
            else:
                per_mod = [
                    enc.forward_level(level, feats[level - 1][m], fused[level - 1]) for m, enc in enumerate(self.encoders)
                ]
                fused.append(self.fusion[level](per_mod, _pool(fused[level - 1])))
            feats.append(per_mod)
        h = self.bottleneck(fused[-1])
        decoded: list[torch.Tensor] = []
        for level in reversed(range(N_LEVELS)):  # S/4, S/2, S
            h = self.decoder[level](feats[level], h)
            if level == self.attention_level:
                h = self.attention(h)
            decoded.insert(0, h)
        return self.output(decoded)
