"""PGMGVCE generator (paper section 2.2, Figure 1), written from the paper's description.

The paper names five stages; each is one module here (``M`` input modalities in channel order
T1 then T2, base width ``b``, ``D = depth`` halvings, level widths ``c_l = b * min(2^l, 8)``)::

    x (B, M, S, S) --split--> M single-channel slices (B, 1, S, S)
    1. FeatureExtractor (one per modality): "convolutional layers for initial feature extraction
       that progressively down-sample the image while increasing the feature-map depth"
         stem  conv3x3 1->c_0                     (B, c_0, S, S)          skip 0
         down_l conv3x3/2 c_{l-1}->c_l, l=1..D    (B, c_l, S/2^l, S/2^l)  skip l (l < D)
       deepest features f_m: (B, c_D, S/2^D, S/2^D)
    2. ModalityFusion: "extracts and combines features from each modality" with "trainable
       weights that adjust dynamically during training": per-modality 1x1 extract convs e_m,
       modality weights w = softmax(logits) (an nn.Parameter), fused = sum_m w_m e_m,
       weighted per-modality features g_m = M w_m e_m             all (B, c_D, S/2^D, S/2^D)
    3. ModalityPathways + FeatureFusionLayers: "separate convolutional pathways for each modality,
       followed by feature fusion layers": residual block per modality on g_m, then
       concat(pathways, fused) ((M+1) c_D channels) -> 1x1 conv -> 3x3 conv  (B, c_D, ...)
    4. AttentionModule: emphasises salient (e.g. pathological) regions: channel then spatial
       attention maps in (0, 1) (CBAM), residual re-weighting       (B, c_D, ...)
    Bottleneck: ``n_res_blocks`` residual blocks                     (B, c_D, ...)
    5. Decoder: D x [bilinear x2 -> conv, concat modality-weighted skip l -> conv] back to
       full resolution, 3x3 head -> 1 channel, linear                (B, 1, S, S)

At the paper's 192x192, ``depth=2`` (the default, used by the demo profile's cost budget) ends at
48x48; ``depth`` may be 1..6 (192 = 3 * 2^6). ``S`` must be divisible by ``2^depth`` and leave at
least 2x2 at the bottom (InstanceNorm needs more than one pixel); other sizes raise ValueError.

With one modality the architecture is the same with one extractor and one pathway; its weight
is trivially 1. Normalisation is InstanceNorm (per sample, no running statistics), so train and
eval modes compute the same function and inference does not depend on the batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vce.models.blocks import check_generator_args, check_image_size, conv_block

__all__ = [
    "MAX_DEPTH",
    "level_channels",
    "ResidualBlock",
    "FeatureExtractor",
    "ModalityFusion",
    "ModalityPathways",
    "FeatureFusionLayers",
    "AttentionModule",
    "UpBlock",
    "Decoder",
    "PGMGVCEGenerator",
]

MAX_DEPTH = 6  # 192 = 3 * 2^6: at most six halvings at the paper's image size


def level_channels(base_channels: int, level: int) -> int:
    """Width of encoder level ``level``: ``b * min(2^level, 8)`` (doubling, capped at 8b)."""
    return base_channels * min(2**level, 8)


class ResidualBlock(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` at constant width: ``(B, C, H, W)`` -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels, act="relu"), conv_block(channels, channels, act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FeatureExtractor(nn.Module):
    """Per-modality feature extraction: ``depth`` stride-2 convs, widths ``c_0 -> ... -> c_depth``.

    ``(B, 1, S, S)`` -> ``(deep (B, c_D, S/2^D, S/2^D), skips [(B, c_l, S/2^l, S/2^l), l < D])``.
    """

    def __init__(self, base_channels: int, depth: int = 2) -> None:
        super().__init__()
        self.stem = conv_block(1, level_channels(base_channels, 0))
        self.downs = nn.ModuleList(
            [
                conv_block(level_channels(base_channels, l - 1), level_channels(base_channels, l), stride=2)
                for l in range(1, depth + 1)
            ]
        )
        self.out_channels = level_channels(base_channels, depth)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem(x)
        skips = []
        for down in self.downs:
            skips.append(h)
            h = down(h)
        return h, skips


class ModalityFusion(nn.Module):
    """Extract and combine per-modality features with trainable, softmax-normalised weights.

    ``logits`` is an ``nn.Parameter`` (initialised to 0: equal weights) optimised with the rest of
    the generator, so the contribution of each modality adapts during training. ``weights()``
    returns ``softmax(logits)`` (shape ``(M,)``, sums to 1); with one modality it is ``[1.0]``.
    """

    def __init__(self, n_modalities: int, channels: int) -> None:
        super().__init__()
        self.n_modalities = n_modalities
        self.extract = nn.ModuleList([conv_block(channels, channels, kernel=1) for _ in range(n_modalities)])
        self.logits = nn.Parameter(torch.zeros(n_modalities))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``M`` maps ``(B, C, h, w)`` -> ``(fused (B, C, h, w), M weighted maps (B, C, h, w), w (M,))``.

        ``fused = sum_m w_m e_m``; the per-modality features are scaled by ``M * w_m`` so that they
        are unscaled at the equal-weight initialisation.
        """
        if len(feats) != self.n_modalities:
            raise ValueError(f"expected {self.n_modalities} modality feature maps, got {len(feats)}")
        w = self.weights()
        extracted = [ex(f) for ex, f in zip(self.extract, feats)]
        fused = sum(w[m] * e for m, e in enumerate(extracted))
        weighted = [self.n_modalities * w[m] * e for m, e in enumerate(extracted)]
        return fused, weighted, w


class FeatureFusionLayers(nn.Module):
    """Merge ``k`` maps of ``C`` channels: concat ``(B, kC, h, w)`` -> 1x1 conv -> 3x3 conv -> ``(B, C, h, w)``."""

    def __init__(self, n_inputs: int, channels: int) -> None:
        super().__init__()
        self.merge = nn.Sequential(conv_block(n_inputs * channels, channels, kernel=1), conv_block(channels, channels))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.merge(torch.cat(maps, dim=1))


class ModalityPathways(nn.Module):
    """Separate residual conv pathway per modality, then :class:`FeatureFusionLayers`.

    Each pathway is a residual block (so the modality weight applied to its input is not
    normalised away). The fusion layers merge all pathway outputs with the fused features.
    ``M`` maps ``(B, C, h, w)`` + fused ``(B, C, h, w)`` -> ``(B, C, h, w)``.
    """

    def __init__(self, n_modalities: int, channels: int) -> None:
        super().__init__()
        self.pathways = nn.ModuleList([ResidualBlock(channels) for _ in range(n_modalities)])
        self.fusion = FeatureFusionLayers(n_modalities + 1, channels)

    def forward(self, weighted: list[torch.Tensor], fused: torch.Tensor) -> torch.Tensor:
        if len(weighted) != len(self.pathways):
            raise ValueError(f"expected {len(self.pathways)} modality maps, got {len(weighted)}")
        return self.fusion([*(p(g) for p, g in zip(self.pathways, weighted)), fused])


class AttentionModule(nn.Module):
    """Salient-region attention, CBAM-style (Woo et al. 2018): channel then spatial attention.

    Channel map ``Mc = sigmoid(MLP(avgpool x) + MLP(maxpool x))``: ``(B, C, 1, 1)``; spatial map
    ``Ms = sigmoid(conv7x7([mean_c y, max_c y]))``: ``(B, 1, h, w)`` with ``y = x * Mc``; both in
    (0, 1). Output ``x + y * Ms`` (residual form: attention re-weights, it cannot erase features).
    """

    def __init__(self, channels: int, reduction: int = 8, spatial_kernel: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Mc (B, C, 1, 1), Ms (B, 1, h, w))`` for ``x`` ``(B, C, h, w)``."""
        ca = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        y = x * ca
        sa = torch.sigmoid(self.spatial(torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], 1)))
        return ca, sa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ca, sa = self.attention_maps(x)
        return x + x * ca * sa


class UpBlock(nn.Module):
    """Bilinear upsampling to the skip's size -> conv, concat skip -> conv.

    ``(B, in_ch, h, w)``, skip ``(B, skip_ch, 2h, 2w)`` -> ``(B, out_ch, 2h, 2w)``.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = conv_block(in_ch, out_ch, act="relu")
        self.merge = conv_block(out_ch + skip_ch, out_ch, act="relu")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.merge(torch.cat([self.reduce(x), skip], dim=1))


class Decoder(nn.Module):
    """``depth`` :class:`UpBlock` s (``c_D -> ... -> c_0``) with skips, linear 3x3 head -> 1 channel.

    ``(B, c_D, S/2^D, S/2^D)`` + skips ``[(B, c_l, S/2^l, S/2^l), l < D]`` -> ``(B, 1, S, S)``.
    """

    def __init__(self, base_channels: int, depth: int = 2) -> None:
        super().__init__()
        b = base_channels
        # ups[0] runs first (deepest): c_D -> c_{D-1}; the last one ends at c_0 and full resolution
        self.ups = nn.ModuleList(
            [UpBlock(level_channels(b, l + 1), level_channels(b, l), level_channels(b, l)) for l in reversed(range(depth))]
        )
        self.head = nn.Conv2d(level_channels(b, 0), 1, 3, padding=1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        if len(skips) != len(self.ups):
            raise ValueError(f"expected {len(self.ups)} skip tensors, got {len(skips)}")
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)


class PGMGVCEGenerator(nn.Module):
    """PGMGVCE generator: ``(B, M, S, S)`` T1/T2 slices -> ``(B, 1, S, S)`` virtual T1C (linear).

    ``depth``: number of halvings (1..6, default 2); ``n_res_blocks``: bottleneck residual blocks.
    """

    def __init__(self, n_modalities: int = 2, base_channels: int = 16, n_res_blocks: int = 2, depth: int = 2) -> None:
        super().__init__()
        check_generator_args(n_modalities, base_channels)
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"depth must be in 1..{MAX_DEPTH}, got {depth}")
        self.n_modalities = n_modalities
        self.base_channels = base_channels
        self.depth = depth
        c = level_channels(base_channels, depth)
        self.extractors = nn.ModuleList([FeatureExtractor(base_channels, depth) for _ in range(n_modalities)])
        self.fusion = ModalityFusion(n_modalities, c)
        self.pathways = ModalityPathways(n_modalities, c)
        self.attention = AttentionModule(c)
        self.bottleneck = nn.Sequential(*[ResidualBlock(c) for _ in range(n_res_blocks)])
        self.decoder = Decoder(base_channels, depth)

    def modality_weights(self) -> torch.Tensor:
        """Current softmax-normalised modality weights ``(M,)`` (order of the input channels)."""
        return self.fusion.weights().detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, self.n_modalities, self.depth, f"PGMGVCE (depth={self.depth})")
        deep, skips = [], []
        for m, extractor in enumerate(self.extractors):
            f, s = extractor(x[:, m : m + 1])
            deep.append(f)
            skips.append(s)
        fused, weighted, w = self.fusion(deep)
        h = self.pathways(weighted, fused)
        h = self.attention(h)
        h = self.bottleneck(h)
        # skip connections: modality-weighted sums of the per-modality encoder features
        merged = [sum(w[m] * skips[m][level] for m in range(self.n_modalities)) for level in range(self.depth)]
        return self.decoder(h, merged)
