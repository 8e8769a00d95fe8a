"""Generators (PGMGVCE, MMgSN baseline), PatchGAN discriminator and the model factory."""

from __future__ import annotations

import pytest
import torch

from vce.io.errors import VCEInputError
from vce.models import (
    MMgSNGenerator,
    PGMGVCEGenerator,
    PatchDiscriminator,
    build_discriminator,
    build_generator,
    count_parameters,
    load_generator,
)
from vce.models.discriminator import adapt_n_layers
from vce.models.mmgsn import MixedFusionBlock, ModalityEncoder, MultiLevelOutput, SelfAttention
from vce.models.pgmgvce import (
    AttentionModule,
    Decoder,
    FeatureExtractor,
    FeatureFusionLayers,
    ModalityFusion,
    ModalityPathways,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("model", ["pgmgvce", "mmgsn"])
@pytest.mark.parametrize("n_mod", [1, 2])
@pytest.mark.parametrize("size", [32, 64, 192])
def test_generator_output_shape(model: str, n_mod: int, size: int) -> None:
    """Tiny profile (32), demo (64) and the paper's 192; 192 with batch 1 and no autograd."""
    torch.manual_seed(0)
    g = build_generator(model, n_mod, 4)
    batch = 1 if size == 192 else 2
    with torch.set_grad_enabled(size != 192):
        out = g(torch.randn(batch, n_mod, size, size))
    assert out.shape == (batch, 1, size, size)
    assert torch.isfinite(out).all()


def test_factory_classes_and_errors() -> None:
    assert isinstance(build_generator("pgmgvce", 2, 4), PGMGVCEGenerator)
    assert isinstance(build_generator("mmgsn", 2, 4), MMgSNGenerator)
    with pytest.raises(ValueError, match="unknown model"):
        build_generator("unet", 2, 4)
    with pytest.raises(ValueError):
        build_generator("pgmgvce", 2, 4)(torch.randn(1, 1, 32, 32))  # wrong number of modalities


def test_pgmgvce_has_the_papers_modules() -> None:
    g = PGMGVCEGenerator(2, 4)
    kinds = {type(m) for m in g.modules()}
    for cls in (FeatureExtractor, ModalityFusion, ModalityPathways, FeatureFusionLayers, AttentionModule, Decoder):
        assert cls in kinds, cls.__name__
    assert len(g.extractors) == 2 and len(g.pathways.pathways) == 2
    single = PGMGVCEGenerator(1, 4)
    assert len(single.extractors) == 1 and len(single.pathways.pathways) == 1
    assert len(single.fusion.extract) == 1 and single.fusion.logits.shape == (1,)
    assert torch.allclose(single.modality_weights(), torch.ones(1))
    # same architecture minus one pathway: every single-modality parameter name exists in the
    # two-modality model with the same shape
    two = dict(g.named_parameters())
    for name, p in single.named_parameters():
        if "fusion.merge.0.0" in name or name == "fusion.logits":  # (M + 1) C inputs; M weights
            continue
        assert name in two and two[name].shape == p.shape, name
    assert {n for n in two if n.startswith("extractors.1.")} and not any(
        n.startswith("extractors.1.") for n, _ in single.named_parameters()
    )


def test_modality_weights_are_trainable() -> None:
    torch.manual_seed(0)
    g = PGMGVCEGenerator(2, 4)
    logits = g.fusion.logits
    assert isinstance(logits, torch.nn.Parameter) and logits.requires_grad
    assert any(p is logits for p in g.parameters())
    w0 = g.modality_weights().clone()
    assert torch.allclose(w0, torch.full((2,), 0.5)) and w0.sum().item() == pytest.approx(1.0)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    x, y = torch.randn(2, 2, 32, 32), torch.randn(2, 1, 32, 32)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(g(x), y).backward()
        assert logits.grad is not None and logits.grad.abs().sum() > 0
        opt.step()
    w1 = g.modality_weights()
    assert not torch.allclose(w0, w1)
    assert w1.sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("size,n_layers,side", [(32, 1, 14), (64, 1, 30), (16, 1, 6), (48, 1, 22), (96, 2, 22), (192, 3, 22)])
def test_discriminator_output_shape(size: int, n_layers: int, side: int) -> None:
    assert adapt_n_layers(size) == n_layers
    d = build_discriminator(2, 4, image_size=size)
    assert isinstance(d, PatchDiscriminator) and d.in_channels == 3
    with torch.no_grad():
        out = d(torch.randn(2, 2, size, size), torch.randn(2, 1, size, size))
    assert out.shape == (2, 1, side, side)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_receptive_field_matches_the_gradient_footprint(n_layers: int) -> None:
    """receptive_field(n) is the side of the input region one score depends on, measured by
    back-propagating a single central score to the input (convolutions only); patches are at most
    half the image."""
    from vce.models.discriminator import MAX_PATCH_FRACTION, receptive_field

    d = PatchDiscriminator(2, 4, n_layers)
    for i, m in enumerate(d.net):  # InstanceNorm couples every position through its statistics
        if isinstance(m, torch.nn.InstanceNorm2d):
            d.net[i] = torch.nn.Identity()
    x = torch.randn(1, 1, 160, 160, requires_grad=True)
    out = d(torch.randn(1, 1, 160, 160), x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    assert int(rows.max() - rows.min() + 1) == receptive_field(n_layers)
    for size in (48, 64, 96, 192):
        assert receptive_field(adapt_n_layers(size)) <= MAX_PATCH_FRACTION * size


def test_discriminator_single_modality_and_channel_check() -> None:
    d = build_discriminator(1, 4, image_size=32)
    assert d(torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)).shape == (1, 1, 14, 14)
    with pytest.raises(ValueError):
        d(torch.randn(1, 2, 32, 32), torch.randn(1, 1, 32, 32))


def test_parameter_counts_are_comparable() -> None:
    pg = count_parameters(build_generator("pgmgvce", 2, 16))
    mm = count_parameters(build_generator("mmgsn", 2, 16))
    assert 0.7 < mm / pg < 1.4
    assert count_parameters(build_generator("pgmgvce", 1, 16)) < pg


def _save_checkpoint(path, g, name, n_mod, base) -> None:
    torch.save(
        {
            "generator": g.state_dict(),
            "variant": {"name": "v", "model": name, "modalities": ["T1", "T2"][:n_mod]},
            "model": {"name": name, "n_modalities": n_mod, "base_channels": base},
            "iterations": 3,
            "seed": 1,
        },
        path,
    )


@pytest.mark.parametrize("name,n_mod", [("pgmgvce", 2), ("mmgsn", 1)])
def test_load_generator_round_trip(tmp_path, name: str, n_mod: int) -> None:
    torch.manual_seed(1)
    g = build_generator(name, n_mod, 4)
    # move the weights away from their init so the round trip is not trivially satisfied
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.01 * torch.randn_like(p))
    g.eval()
    path = tmp_path / "checkpoint.pt"
    _save_checkpoint(path, g, name, n_mod, 4)
    loaded, meta = load_generator(path)
    assert not loaded.training
    assert meta["variant"]["model"] == name and meta["seed"] == 1 and "generator" not in meta
    x = torch.randn(2, n_mod, 32, 32)
    with torch.no_grad():
        assert torch.equal(g(x), loaded(x))


def test_load_generator_errors(tmp_path) -> None:
    with pytest.raises(VCEInputError, match="missing.pt"):
        load_generator(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(VCEInputError, match="bad.pt"):
        load_generator(bad)
    wrong = tmp_path / "wrong.pt"
    g = build_generator("pgmgvce", 2, 4)
    _save_checkpoint(wrong, g, "pgmgvce", 2, 8)  # base_channels does not match the weights
    with pytest.raises(VCEInputError, match="wrong.pt"):
        load_generator(wrong)


def test_bounded_output_for_sigmoid_and_tanh_normalisation() -> None:
    from vce.models.factory import build_generator, output_for

    assert output_for("zscore") == "linear" and output_for("sigmoid") == output_for("tanh") == "sigmoid"
    g = build_generator("pgmgvce", 2, 4, output="sigmoid")
    y = g(torch.randn(2, 2, 32, 32) * 10).detach()
    assert float(y.min()) > 0 and float(y.max()) < 1
    assert g.modality_weights().shape == (2,)  # attributes of the wrapped generator stay reachable


def test_mmgsn_has_the_papers_modules_and_single_modality_variant() -> None:
    g = MMgSNGenerator(2, 4)
    kinds = {type(m) for m in g.modules()}
    for cls in (ModalityEncoder, MixedFusionBlock, SelfAttention, MultiLevelOutput):
        assert cls in kinds, cls.__name__
    assert len(g.encoders) == 2 and len(g.fusion) == 3 and len(g.decoder) == 3
    single = MMgSNGenerator(1, 4)
    assert len(single.encoders) == 1
    assert count_parameters(single) == count_parameters(g) - count_parameters(g.encoders[1])


def test_mixed_fusion_statistics() -> None:
    """sum / product / maximum of the modality maps, checked against a hand computation."""
    torch.manual_seed(0)
    block = MixedFusionBlock(2, 2)
    a, b = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    captured = {}
    block.mix.register_forward_hook(lambda mod, inp, out: captured.setdefault("x", inp[0]))
    block([a, b])
    expected = torch.cat([a + b, a * b, torch.maximum(a, b)], dim=1)
    assert torch.allclose(captured["x"], expected)
    with pytest.raises(ValueError, match="context"):
        MixedFusionBlock(2, 2, context_channels=2)([a, b])


@pytest.mark.parametrize("size", [30, 33, 4, 62])
@pytest.mark.parametrize("model", ["pgmgvce", "mmgsn"])
def test_sizes_the_architecture_cannot_handle_are_refused(model: str, size: int) -> None:
    g = build_generator(model, 2, 4)
    with pytest.raises(ValueError, match="multiples of 4"):
        g(torch.randn(1, 2, size, size))


def test_pgmgvce_depth_option() -> None:
    g = build_generator("pgmgvce", 2, 2, depth=6)  # 192 = 3 * 2^6: six halvings end at 3x3
    assert len(g.extractors[0].downs) == 6 and len(g.decoder.ups) == 6
    with torch.no_grad():
        assert g(torch.randn(1, 2, 192, 192)).shape == (1, 1, 192, 192)
    with pytest.raises(ValueError, match="multiples of 64"):
        g(torch.randn(1, 2, 64, 64))  # 64 / 2^6 = 1 pixel: too small
    with pytest.raises(ValueError, match="depth"):
        build_generator("pgmgvce", 2, 4, depth=7)
    with pytest.raises(ValueError, match="architecture options"):
        build_generator("mmgsn", 2, 4, depth=3)


def test_cbam_attention_maps_in_range_and_change_features() -> None:
    torch.manual_seed(0)
    att = AttentionModule(16)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        ca, sa = att.attention_maps(x)
    assert ca.shape == (2, 16, 1, 1) and sa.shape == (2, 1, 8, 8)
    for m in (ca, sa):
        assert float(m.min()) > 0 and float(m.max()) < 1
    y = att(x)
    assert torch.allclose(y, x + x * ca * sa)  # the documented residual re-weighting
    assert (y - x).abs().mean() > 1e-3
    # salient positions get more weight: the spatial map is not constant over the image
    assert float(sa.std()) > 0


def test_self_attention_is_row_stochastic_and_learns_to_change_features() -> None:
    torch.manual_seed(0)
    att = SelfAttention(16)
    x = torch.randn(2, 16, 4, 4)
    a = att.attention(x).detach()
    assert a.shape == (2, 16, 16)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.allclose(a.sum(dim=-1), torch.ones(2, 16), atol=1e-6)
    assert torch.equal(att(x), x)  # gamma starts at 0: identity
    att(x).pow(2).sum().backward()
    assert att.gamma.grad is not None and att.gamma.grad.abs().item() > 0
    with torch.no_grad():
        att.gamma.fill_(0.5)
    v = att.value(x).flatten(2)
    expected = x + 0.5 * torch.einsum("bcm,bnm->bcn", v, a).view_as(x)  # independent of bmm order
    assert torch.allclose(att(x), expected, atol=1e-5)
    assert (att(x) - x).abs().mean() > 1e-3


def test_modality_weights_receive_gradients_through_the_whole_generator() -> None:
    """Per-modality weights steer the fusion: changing them changes the output."""
    torch.manual_seed(0)
    g = PGMGVCEGenerator(2, 4).eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        y0 = g(x)
        g.fusion.logits.copy_(torch.tensor([2.0, -2.0]))
        y1 = g(x)
    assert g.modality_weights()[0] > 0.9
    assert (y0 - y1).abs().max() > 1e-4


def test_load_generator_round_trip_with_arch_options(tmp_path) -> None:
    torch.manual_seed(2)
    g = build_generator("pgmgvce", 2, 2, output="sigmoid", depth=3)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "generator": g.state_dict(),
            "model": {"name": "pgmgvce", "n_modalities": 2, "base_channels": 2, "output": "sigmoid",
                      "arch": {"depth": 3}},
        },
        path,
    )
    torch.load(path, weights_only=True)  # the checkpoint holds plain tensors and containers only
    loaded, meta = load_generator(path)
    assert meta["model"]["arch"] == {"depth": 3} and loaded.depth == 3
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(g.eval()(x), loaded(x))
