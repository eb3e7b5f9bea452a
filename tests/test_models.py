import numpy as np
import pytest
import torch

from mfvc_gpu.models import CBAM, BetaVAE, Encoder, ResVAEBlock, SimAM, VAEConfig, make_attention, vae_loss


def simam_reference(x: np.ndarray, lam: float = 1e-4) -> np.ndarray:
    """The paper's energy formula, one activation at a time (μ, σ² over the other activations)."""
    out = np.empty_like(x)
    n_, c_, h_, w_ = x.shape
    for n in range(n_):
        for c in range(c_):
            ch = x[n, c].ravel()
            for i, t in enumerate(ch):
                mu = ch.mean()
                var = ((ch - mu) ** 2).sum() / (ch.size - 1)
                e = 4 * (var + lam) / ((t - mu) ** 2 + 2 * var + 2 * lam)
                out[n, c].flat[i] = t / (1 + np.exp(-1 / e))
    return out


def test_simam_matches_energy_formula():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    got = SimAM()(x).numpy()
    np.testing.assert_allclose(got, simam_reference(x.numpy()), rtol=1e-10)


def test_simam_is_parameter_free_and_keeps_shape():
    m = SimAM()
    assert sum(p.numel() for p in m.parameters()) == 0
    x = torch.randn(4, 8, 6, 6)
    assert m(x).shape == x.shape


def test_cbam_and_make_attention():
    x = torch.randn(2, 16, 8, 8)
    cbam = CBAM(16)
    assert cbam(x).shape == x.shape
    assert sum(p.numel() for p in cbam.parameters()) > 0
    assert isinstance(make_attention("none", 16), torch.nn.Identity)
    with pytest.raises(ValueError, match="attention='bogus'"):
        make_attention("bogus", 16)


def test_res_block_residual_switch():
    with_res = ResVAEBlock(1, 16, residual=True)
    without = ResVAEBlock(1, 16, residual=False)
    assert with_res.shortcut is not None and without.shortcut is None
    assert with_res(torch.rand(2, 1, 32, 32)).shape == (2, 16, 32, 32)
    assert sum(p.numel() for p in with_res.parameters()) > sum(p.numel() for p in without.parameters())


def test_encoder_fuses_496_features():
    enc = Encoder(VAEConfig(latent_dim=7))
    assert enc.n_features == 16 + 32 + 64 + 128 + 256 == 496
    mu, logvar = enc.eval()(torch.rand(3, 1, 32, 32))
    assert mu.shape == logvar.shape == (3, 7)
    assert Encoder(VAEConfig(fusion=False)).n_features == 256


@pytest.mark.parametrize("decoder", ["transpose", "upsample"])
def test_vae_forward_shapes_and_range(decoder):
    vae = BetaVAE(VAEConfig(latent_dim=5, decoder=decoder)).eval()
    kinds = {type(m) for m in vae.decoder.modules()}
    assert (torch.nn.ConvTranspose2d in kinds) == (decoder == "transpose") and (torch.nn.Upsample in kinds) == (
        decoder == "upsample"
    )
    x = torch.rand(4, 1, 32, 32)
    recon, mu, logvar = vae(x)
    assert recon.shape == x.shape
    assert recon.min() >= 0 and recon.max() <= 1
    # eval mode decodes the mean: deterministic
    recon2, _, _ = vae(x)
    assert torch.equal(recon, recon2)


def test_vae_loss_terms():
    x = torch.rand(4, 1, 32, 32)
    recon = torch.rand(4, 1, 32, 32)
    zero = torch.zeros(4, 3)
    total, rec, kl = vae_loss(x, recon, zero, zero, beta=0.5)
    assert kl.item() == pytest.approx(0.0, abs=1e-7)
    assert rec.item() == pytest.approx(((x - recon) ** 2).sum().item() / 4, rel=1e-6)
    mu = torch.ones(4, 3)
    total, rec, kl = vae_loss(x, recon, mu, zero, beta=0.5)
    assert kl.item() == pytest.approx(1.5)  # 0.5 * sum(mu^2) per sample = 0.5 * 3
    assert total.item() == pytest.approx(rec.item() + 0.75, rel=1e-6)
