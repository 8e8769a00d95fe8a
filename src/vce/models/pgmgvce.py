"""PGMGVCE generator (paper section 2.2, Figure 1), written from the paper's description.

Data flow for ``M`` input modalities (channel order T1 then T2) and base width ``b``::

    x (B, M, S, S) --split--> per modality: FeatureExtractor
        stem   conv3x3 1->b            @ S      (skip 0)
        down1  conv3x3/2 b->2b         @ S/2    (skip 1)
        down2  conv3x3/2 2b->4b        @ S/4    (f_m)
    ModalityFusion: per-modality 1x1 "extract" convs e_m, trainable modality weights
        w = softmax(logits) (nn.Parameter, learnt with the rest of the network);
        fused = sum_m w_m e_m, weighted per-modality features g_m = M w_m e_m
    ModalityPathways: a separate residual conv pathway per modality on g_m, then feature-fusion
        layers (concat of the pathways and ``fused`` -> 1x1 conv -> 3x3 conv)
    AttentionModule: channel + spatial attention (CBAM) to emphasise salient regions
    Bottleneck: residual blocks @ S/4
    Decoder: upsample x2 -> conv, concat modality-weighted skip 1 -> conv; same with skip 0;
        3x3 head conv -> 1 channel, linear output (B, 1, S, S)

With one modality the same architecture has one pathway and the weight is trivially 1.
Normalisation is InstanceNorm (per sample, no running statistics), so train and eval modes
compute the same function and inference does not depend on the batch.
Any ``S`` works (the decoder upsamples to the skip's size); the study uses multiples of 4.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "conv_block",
    "ResidualBlock",
    "FeatureExtractor",
    "ModalityFusion",
    "ModalityPathways",
    "AttentionModule",
    "UpBlock",
    "Decoder",
    "PGMGVCEGenerator",
]


def check_generator_args(n_modalities: int, base_channels: int) -> None:
    """Both generators need at least one modality and one base channel."""
    if n_modalities < 1:
        raise ValueError(f"n_modalities must be >= 1, got {n_modalities}")
    if base_channels < 1:
        raise ValueError(f"base_channels must be >= 1, got {base_channels}")


def conv_block(
    in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3, act: str = "lrelu", norm: bool = True
) -> nn.Sequential:
    """conv -> InstanceNorm (affine) -> activation (``lrelu`` 0.2 | ``relu`` | ``none``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=not norm)
    ]
    if norm:
        layers.append(nn.InstanceNorm2d(out_ch, affine=True))
    if act == "lrelu":
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    elif act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act != "none":
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``x + IN(conv(ReLU(IN(conv(x)))))`` at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels, act="relu"), conv_block(channels, channels, act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FeatureExtractor(nn.Module):
    """Per-modality encoder: downsamples x2 twice while deepening features (b -> 2b -> 4b).

    Returns the deepest features and the two skip tensors ``[full-res (b), half-res (2b)]``.
    """

    def __init__(self, base_channels: int) -> None:
        super().__init__()
        b = base_channels
        self.stem = conv_block(1, b)
        self.down1 = conv_block(b, 2 * b, stride=2)
        self.down2 = conv_block(2 * b, 4 * b, stride=2)
        self.out_channels = 4 * b

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s0 = self.stem(x)
        s1 = self.down1(s0)
        return self.down2(s1), [s0, s1]


class ModalityFusion(nn.Module):
    """Extract and combine per-modality features with trainable, softmax-normalised weights.

    ``logits`` is an ``nn.Parameter`` (initialised to 0: equal weights) optimised with the rest of
    the generator, so the contribution of each modality adapts during training. ``weights()``
    returns ``softmax(logits)``; with one modality it is ``[1.0]``.
    """

    def __init__(self, n_modalities: int, channels: int) -> None:
        super().__init__()
        self.n_modalities = n_modalities
        self.extract = nn.ModuleList([conv_block(channels, channels, kernel=1) for _ in range(n_modalities)])
        self.logits = nn.Parameter(torch.zeros(n_modalities))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Return ``(fused, weighted per-modality features, weights)``.

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


class ModalityPathways(nn.Module):
    """Separate residual conv pathways per modality, then feature-fusion layers.

    Each pathway is a residual block (so the modality weight applied to its input is not
    normalised away). The fusion layers concatenate all pathway outputs with the fused
    features and merge them (1x1 conv, then 3x3 conv).
    """

    def __init__(self, n_modalities: int, channels: int) -> None:
        super().__init__()
        self.pathways = nn.ModuleList([ResidualBlock(channels) for _ in range(n_modalities)])
        self.fusion = nn.Sequential(
            conv_block((n_modalities + 1) * channels, channels, kernel=1),
            conv_block(channels, channels),
        )

    def forward(self, weighted: list[torch.Tensor], fused: torch.Tensor) -> torch.Tensor:
        paths = [p(g) for p, g in zip(self.pathways, weighted)]
        return self.fusion(torch.cat([*paths, fused], dim=1))


class AttentionModule(nn.Module):
    """CBAM-style attention (Woo et al. 2018): channel attention then spatial attention.

    Channel: ``sigmoid(MLP(avgpool) + MLP(maxpool))``; spatial: ``sigmoid(conv7x7([mean_c, max_c]))``.
    The output is ``x + x * Mc * Ms`` (residual form, so attention can only re-weight, not erase).
    """

    def __init__(self, channels: int, reduction: int = 8, spatial_kernel: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ca = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        y = x * ca
        sa = torch.sigmoid(self.spatial(torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], 1)))
        return x + y * sa


class UpBlock(nn.Module):
    """Bilinear x2 upsampling (to the skip's size) -> conv, concat skip -> conv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = conv_block(in_ch, out_ch, act="relu")
        self.merge = conv_block(out_ch + skip_ch, out_ch, act="relu")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.merge(torch.cat([self.reduce(x), skip], dim=1))


class Decoder(nn.Module):
    """Two ``UpBlock`` s (4b -> 2b -> b) with skip connections and a linear 3x3 head -> 1 channel."""

    def __init__(self, base_channels: int) -> None:
        super().__init__()
        b = base_channels
        self.up1 = UpBlock(4 * b, 2 * b, 2 * b)
        self.up2 = UpBlock(2 * b, b, b)
        self.head = nn.Conv2d(b, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.up1(x, skips[1])
        x = self.up2(x, skips[0])
        return self.head(x)


class PGMGVCEGenerator(nn.Module):
    """PGMGVCE generator: ``(B, M, S, S)`` T1/T2 slices -> ``(B, 1, S, S)`` virtual T1C (linear)."""

    def __init__(self, n_modalities: int = 2, base_channels: int = 16, n_res_blocks: int = 2) -> None:
        super().__init__()
        check_generator_args(n_modalities, base_channels)
        self.n_modalities = n_modalities
        self.base_channels = base_channels
        c = 4 * base_channels
        self.extractors = nn.ModuleList([FeatureExtractor(base_channels) for _ in range(n_modalities)])
        self.fusion = ModalityFusion(n_modalities, c)
        self.pathways = ModalityPathways(n_modalities, c)
        self.attention = AttentionModule(c)
        self.bottleneck = nn.Sequential(*[ResidualBlock(c) for _ in range(n_res_blocks)])
        self.decoder = Decoder(base_channels)

    def modality_weights(self) -> torch.Tensor:
        """Current softmax-normalised modality weights (order of the input channels)."""
        return self.fusion.weights().detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.n_modalities:
            raise ValueError(f"expected (B, {self.n_modalities}, S, S) input, got {tuple(x.shape)}")
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
        merged = [sum(w[m] * skips[m][level] for m in range(self.n_modalities)) for level in range(2)]
        return self.decoder(h, merged)
