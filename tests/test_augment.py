"""Invariant training: random affine views of the training batches, never of what is encoded; and the
rule that turns torch.compile on where a run is long enough to repay it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfvc_gpu import MFVC
from mfvc_gpu.augment import affine_view
from mfvc_gpu.models import BetaVAE, VAEConfig
from mfvc_gpu.resolution import resolve
from mfvc_gpu.train import COMPILE_BREAK_EVEN_STEPS, TrainConfig, cpp_compiler, encode, numerics, train_vae, use_compile

CPU = torch.device("cpu")


def dot(n=8, size=32, row=16, col=16):
    x = torch.zeros(n, 1, size, size)
    x[:, :, row - 1 : row + 1, col - 1 : col + 1] = 1.0
    return x


def centre(x):
    """The centre of mass (row, column) of each image."""
    r = torch.arange(x.shape[-2], dtype=x.dtype)
    c = torch.arange(x.shape[-1], dtype=x.dtype)
    m = x.sum((1, 2, 3))
    return torch.stack([(x.sum((1, 3)) * r).sum(1) / m, (x.sum((1, 2)) * c).sum(1) / m], 1)


def test_zero_strength_is_the_batch_itself():
    x = dot()
    assert affine_view(x, 0.0, torch.Generator().manual_seed(0)) is x


def test_views_are_seeded_differ_per_image_and_stay_in_range():
    x = dot(16)
    a = affine_view(x, 0.1, torch.Generator().manual_seed(3))
    b = affine_view(x, 0.1, torch.Generator().manual_seed(3))
    c = affine_view(x, 0.1, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(v.flatten().tolist()) for v in a}) == 16  # one map per image
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 + 1e-6


def test_shifts_move_a_dot_by_at_most_the_strength_times_the_side():
    """A dot at the centre: rotation and scale keep it there, so its shift is the map's translation, within
    ±strength × 32 pixels along each axis (one pixel of slack for the bilinear resampling), and not all zero."""
    x = dot(256)
    moved = centre(affine_view(x, 0.1, torch.Generator().manual_seed(0))) - centre(x)
    assert float(moved.abs().max()) <= 0.1 * 32 + 1.0
    assert float(moved.abs().max()) > 1.5  # some really moved
    assert float(moved.mean(0).abs().max()) < 0.6  # and in both directions


def test_a_larger_strength_moves_images_further():
    x = dot(256)
    small, large = (
        (centre(affine_view(x, s, torch.Generator().manual_seed(0))) - centre(x)).abs().mean() for s in (0.05, 0.2)
    )
    assert float(large) > 2.5 * float(small)


def test_training_sees_views_and_encoding_never_does(digits):
    """augment changes the training (other losses from the same seed), while encoding the same images
    twice gives the same codes, equal to the encoder's on the plain images."""
    x = digits.images[:256]
    runs = {}
    for s in (0.0, 0.2):
        torch.manual_seed(0)
        model = BetaVAE(VAEConfig(latent_dim=4))
        cfg = TrainConfig(epochs=2, batch_size=64, lr=0.005, augment=s)
        runs[s] = (model, [h["loss"] for h in train_vae(model, x, cfg, CPU, seed=1, progress=False)])
    assert runs[0.0][1] != runs[0.2][1]
    model = runs[0.2][0]
    z1, z2 = encode(model, x, CPU), encode(model, x, CPU)
    assert torch.equal(z1, z2)
    with torch.no_grad():
        plain, _ = model.encoder(torch.from_numpy(x).float().div(255).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(z1, plain.float(), rtol=1e-4, atol=1e-4)


def test_the_fitted_estimator_trains_with_the_strength_given_and_transforms_without(digits):
    x = digits.images[:300, 0]
    est = MFVC(n_clusters=10, epochs=1, augment=0.15, latent_dim=4, manifold="none", progress=False).fit(x)
    assert est.train_config_.augment == 0.15
    assert np.array_equal(est.transform(x), est.transform(x))


@pytest.mark.parametrize("profile, expected", [("paper", 0.0), ("fast", None)])
def test_augment_left_unset_takes_the_profile(profile, expected):
    from mfvc_gpu.params import PROFILES

    r = resolve({"profile": profile, "device": "cpu"})
    assert r.train.augment == (expected if expected is not None else PROFILES["fast"]["augment"])


def test_compile_auto_turns_on_where_the_run_repays_it():
    on_cpu = cpp_compiler() is not None
    assert use_compile("auto", CPU, COMPILE_BREAK_EVEN_STEPS - 1) is False
    assert use_compile("auto", CPU, COMPILE_BREAK_EVEN_STEPS) is on_cpu
    assert use_compile("auto", torch.device("cuda"), 10**9) is False  # not measured on a GPU: eager
    assert use_compile("on", CPU, 1) is True and use_compile("off", CPU, 10**9) is False
    cfg = TrainConfig(epochs=30, batch_size=64, lr=0.005, augment=0.1)
    assert numerics(cfg, CPU, 10_000) == dict(
        precision=numerics(cfg, CPU, 10_000)["precision"], compiled=on_cpu, augment=0.1
    )
    assert numerics(cfg, CPU, 1_000)["compiled"] is False  # 450 steps
