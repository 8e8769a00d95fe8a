"""The trainer's parts on their own: GanStep, EMA, LossLog, the resumable state file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from vce.config import TrainConfig, Variant
from vce.io.errors import VCEInputError
from vce.losses import LossWeights
from vce.models.checkpoint import build_from_spec, generator_spec
from vce.models.factory import build_discriminator
from vce.training import LOSS_COLUMNS, GanStep
from vce.training.distributed import DistContext
from vce.training.ema import EMA
from vce.training.history import LossLog
from vce.training.precision import Precision
from vce.training.state import identity, load_state, save_state

CFG = TrainConfig(iterations=4, batch_size=2, base_channels=4, threads=1)
SIZE = 32


def _step(variant: Variant, seed: int = 0, gp_type: str = "r1", gp_weight: float = 0.01) -> GanStep:
    torch.manual_seed(seed)
    G = build_from_spec(generator_spec(variant, CFG))
    D = build_discriminator(len(variant.modalities), CFG.base_channels, image_size=SIZE)
    cpu = torch.device("cpu")
    return GanStep(G, D, weights=LossWeights(variant.lambda_pg, variant.lambda_gan, variant.lambda_l1), lr=2e-4,
                   betas=(0.5, 0.999), gp_type=gp_type, gp_weight=gp_weight, pg_eps=1e-3,
                   precision=Precision("off", cpu), dist=DistContext(device=cpu), gp_seed=5)  # fmt: skip


def _batch(seed: int, n_mod: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, n_mod, SIZE, SIZE, generator=g), torch.rand(2, 1, SIZE, SIZE, generator=g)


def _count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(("lambda_gan", "d_forwards"), [(1.0, 3), (0.0, 2)])
def test_zero_weight_gan_term_costs_no_discriminator_pass(lambda_gan: float, d_forwards: int) -> None:
    """D step: real + fake; the G step adds D(x, fake) only when the GAN term is trained."""
    step = _step(Variant("v", lambda_gan=lambda_gan))
    calls = _count_forwards(step.D)
    values = step.step(*_batch(0))
    assert calls[0] == d_forwards
    assert set(values) == set(LOSS_COLUMNS) and all(np.isfinite(list(values.values())))
    assert step.iteration == 1


def test_wgan_gp_needs_one_more_discriminator_pass() -> None:
    step = _step(Variant("v"), gp_type="wgan_gp", gp_weight=10.0)
    calls = _count_forwards(step.D)
    values = step.step(*_batch(0))
    assert calls[0] == 4 and values["gp"] > 0


def test_step_state_round_trip_continues_identically() -> None:
    """A step restored from state_dict() takes the same next step as the original."""
    v = Variant("v")
    a = _step(v, seed=1, gp_type="wgan_gp", gp_weight=1.0)
    a.step(*_batch(0))
    buf = io.BytesIO()  # through bytes as in the state file (a live state_dict shares optimiser tensors)
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = _step(v, seed=2, gp_type="wgan_gp", gp_weight=1.0)  # other initial weights
    b.load_state_dict(state)
    assert a.step(*_batch(1)) == b.step(*_batch(1))
    assert all(torch.equal(p, q) for p, q in zip(a.G.parameters(), b.G.parameters()))


def test_non_finite_loss_is_named() -> None:
    step = _step(Variant("v"))
    x, y = _batch(0)
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite .* at iteration 1"):
        step.step(x, y)


def test_ema_matches_an_independent_average() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, 0.9)
    expected = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(net)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, net.parameters())]
    assert all(torch.allclose(e, s, atol=1e-6) for e, s in zip(expected, ema.model.parameters()))
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError):
        EMA(net, 1.0)


def test_loss_log_rows_are_window_means() -> None:
    rng = np.random.default_rng(0)
    vals = rng.random((7, 2))
    log = LossLog(("a", "b"), log_every=3, iterations=7)
    rows = [log.add(i + 1, {"a": float(v[0]), "b": float(v[1])}) for i, v in enumerate(vals)]
    logged = [r for r in rows if r is not None]
    assert [r["iteration"] for r in logged] == [1, 3, 6, 7]
    for r, window in zip(logged, (vals[0:1], vals[1:3], vals[3:6], vals[6:7])):
        assert r["a"] == pytest.approx(window[:, 0].mean()) and r["b"] == pytest.approx(window[:, 1].mean())


def test_state_file_refuses_another_run(tmp_path: Path) -> None:
    ident = identity({"name": "v"}, 1, {"iterations": 10, "lr": 1e-3}, 1)
    path = save_state(tmp_path / "s" / "last.pt", 4, ident, {"x": torch.ones(2)})
    # the iteration count may change between an interruption and its resumption
    assert load_state(path, identity({"name": "v"}, 1, {"iterations": 20, "lr": 1e-3}, 1), 20)["iteration"] == 4
    with pytest.raises(VCEInputError, match="train config"):
        load_state(path, identity({"name": "v"}, 1, {"iterations": 10, "lr": 2e-3}, 1), 10)
    with pytest.raises(VCEInputError, match="seed, world size"):
        load_state(path, identity({"name": "v"}, 2, {"iterations": 10, "lr": 1e-3}, 2), 10)
    with pytest.raises(VCEInputError, match="iteration 4 >= iterations 4"):
        load_state(path, ident, 4)
    path.write_bytes(b"not a state")
    with pytest.raises(VCEInputError, match="not a loadable"):
        load_state(path, ident, 10)
