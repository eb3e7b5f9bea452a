import numpy as np
import pytest
import torch

from mfvc_gpu.data import unit_float
from mfvc_gpu.errors import MFVCError
from mfvc_gpu.models import BetaVAE, VAEConfig
from mfvc_gpu.train import TrainConfig, cpp_compiler, encode, train_vae

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small(digits):
    return digits.images[:256]


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.dtype.is_floating_point])


def test_training_lowers_the_loss(small):
    model = BetaVAE(VAEConfig(latent_dim=8))
    hist = train_vae(
        model, small, TrainConfig(epochs=3, batch_size=32, augment=0.0, lr=0.005), CPU, seed=0, progress=False
    )
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["recon"] < hist[0]["recon"]
    assert all(h["images_per_s"] > 0 for h in hist)


def twin_models(latent=4):
    torch.manual_seed(0)
    a = BetaVAE(VAEConfig(latent_dim=latent))
    b = BetaVAE(VAEConfig(latent_dim=latent))
    b.load_state_dict(a.state_dict())
    return a, b


def test_training_is_reproducible_on_cpu(small):
    a, b = twin_models()
    cfg = TrainConfig(epochs=1, batch_size=64, augment=0.0, lr=0.005)
    train_vae(a, small, cfg, CPU, seed=7, progress=False)
    torch.manual_seed(999)  # train_vae must re-seed, whatever came before
    train_vae(b, small, cfg, CPU, seed=7, progress=False)
    assert torch.equal(weights(a), weights(b))
    c, _ = twin_models()
    train_vae(c, small, cfg, CPU, seed=8, progress=False)
    assert not torch.equal(weights(a), weights(c))


class Interrupt(Exception):
    pass


def test_checkpoint_resume_gives_the_same_model(small, tmp_path, monkeypatch):
    straight, interrupted = twin_models()
    cfg = TrainConfig(epochs=2, batch_size=64, augment=0.0, lr=0.005)
    train_vae(straight, small, cfg, CPU, seed=3, progress=False)

    orig, calls = torch.optim.AdamW.step, {"n": 0}

    def step_then_stop(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:  # 256 images / 64 = 4 steps: stop during the second epoch
            raise Interrupt
        return orig(self, *args, **kwargs)

    ckpt = tmp_path / "ckpt.pt"
    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_stop)
    with pytest.raises(Interrupt):
        train_vae(interrupted, small, cfg, CPU, seed=3, checkpoint=ckpt, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", orig)
    assert int(torch.load(ckpt, weights_only=True)["epoch"]) == 1

    resumed = BetaVAE(VAEConfig(latent_dim=4))
    hist = train_vae(resumed, small, cfg, CPU, seed=3, checkpoint=ckpt, resume=True, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert torch.equal(weights(resumed), weights(straight))  # bit-identical on the CPU


def test_encode_returns_posterior_means(small):
    model = BetaVAE(VAEConfig(latent_dim=6)).eval()
    z = encode(model, small[:50], CPU, batch_size=16)
    assert z.shape == (50, 6) and z.dtype == torch.float32
    mu, _ = model.encoder(unit_float(torch.from_numpy(small[:50])))
    assert torch.allclose(z, mu, atol=1e-5)
    assert np.isfinite(z.numpy()).all()


def test_a_checkpoint_from_other_settings_or_damaged_is_refused(small, tmp_path):
    from mfvc_gpu import MFVCError

    ckpt = tmp_path / "ckpt.pt"
    train_vae(
        BetaVAE(VAEConfig(latent_dim=4)),
        small,
        TrainConfig(epochs=1, batch_size=64, augment=0.0, lr=0.005),
        CPU,
        seed=3,
        checkpoint=ckpt,
        progress=False,
    )
    with pytest.raises(MFVCError, match=r"other settings \(.*train.batch_size 64 there, 32 now"):
        train_vae(
            BetaVAE(VAEConfig(latent_dim=4)),
            small,
            TrainConfig(epochs=2, batch_size=32, augment=0.0, lr=0.005),
            CPU,
            seed=3,
            checkpoint=ckpt,
            resume=True,
            progress=False,
        )
    with pytest.raises(MFVCError, match=r"network.latent_dim 4 there, 6 now"):
        train_vae(
            BetaVAE(VAEConfig(latent_dim=6)),
            small,
            TrainConfig(epochs=1, batch_size=64, augment=0.0, lr=0.005),
            CPU,
            seed=3,
            checkpoint=ckpt,
            resume=True,
            progress=False,
        )
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    with pytest.raises(MFVCError, match="cannot be read.*damaged"):
        train_vae(
            BetaVAE(VAEConfig(latent_dim=4)),
            small,
            TrainConfig(epochs=1, batch_size=64, augment=0.0, lr=0.005),
            CPU,
            seed=3,
            checkpoint=ckpt,
            resume=True,
            progress=False,
        )


def test_a_diverging_loss_names_the_epoch_and_step(small):
    from mfvc_gpu import MFVCError

    with pytest.raises(MFVCError, match=r"at epoch 1, step \d+: training diverged; lower the learning rate"):
        train_vae(
            BetaVAE(VAEConfig(latent_dim=4)),
            small,
            TrainConfig(epochs=1, batch_size=64, augment=0.0, lr=1e12),
            CPU,
            seed=0,
            progress=False,
        )


def test_every_step_has_the_same_batch_shape(small, monkeypatch):
    shapes = []
    orig = BetaVAE.forward

    def record(self, x):
        shapes.append(tuple(x.shape))
        return orig(self, x)

    monkeypatch.setattr(BetaVAE, "forward", record)
    train_vae(
        BetaVAE(VAEConfig(latent_dim=4)),
        small[:200],
        TrainConfig(epochs=1, batch_size=64, augment=0.0, lr=0.005),
        CPU,
        seed=0,
        progress=False,
    )
    assert shapes == [(64, 1, 32, 32)] * 3  # 200 images: 3 full batches, the last 8 dropped


@pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler (g++); none here")
def test_compiled_training_gives_the_eager_losses():
    """compile='on' on the CPU: the same seed gives the eager loss curve to 1e-3 relative
    (the compiled kernels sum in another order; the sampling noise is eager's)."""
    rng = np.random.default_rng(0)
    x = (rng.random((128, 1, 32, 32)) * 255).astype(np.uint8)
    runs = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model = BetaVAE(VAEConfig(latent_dim=4))
        cfg = TrainConfig(
            epochs=2, batch_size=64, augment=0.0, lr=0.005, compile=mode, amp=False
        )  # float32: the kernels' order alone differs
        runs[mode] = [h["loss"] for h in train_vae(model, x, cfg, CPU, seed=1, progress=False)]
    np.testing.assert_allclose(runs["on"], runs["off"], rtol=1e-3)


def test_amp_applies_only_where_bfloat16_is_native(monkeypatch):
    from mfvc_gpu.train import use_amp

    assert not use_amp(False, CPU)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not use_amp(True, CPU)  # emulated bfloat16 is slower than float32: off
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert use_amp(True, CPU)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert not use_amp(True, cuda)  # Turing: bfloat16 emulated
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert use_amp(True, cuda) and not use_amp(False, cuda)


def test_bfloat16_training_runs_in_bfloat16_and_follows_the_float32_losses():
    """amp on a CPU with native bfloat16: the network's output is bfloat16 (float32 without amp),
    and the loss curve stays within 3% of float32's."""
    from mfvc_gpu import train as train_mod

    if not train_mod.native_bf16(CPU):
        pytest.skip("this CPU has no native bfloat16 (AVX512-BF16 or AMX): amp does not apply here")
    rng = np.random.default_rng(0)
    x = (rng.random((128, 1, 32, 32)) * 255).astype(np.uint8)
    runs = {}
    for amp in (False, True):
        seen = []
        torch.manual_seed(0)
        model = BetaVAE(VAEConfig(latent_dim=4))
        model.register_forward_hook(lambda m, i, out, seen=seen: seen.append(out[0].dtype))
        hist = train_vae(
            model, x, TrainConfig(epochs=3, batch_size=64, augment=0.0, lr=0.005, amp=amp), CPU, seed=1, progress=False
        )
        runs[amp] = [h["loss"] for h in hist]
        assert set(seen) == {torch.bfloat16 if amp else torch.float32}
    np.testing.assert_allclose(runs[True], runs[False], rtol=0.03)


def test_compile_without_a_cpp_compiler_is_one_clear_error(monkeypatch):
    """A slim image has no g++: torch.compile would fail deep inside inductor; the loop says what to do."""
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    x = np.zeros((64, 1, 32, 32), np.uint8)
    cfg = TrainConfig(epochs=1, batch_size=32, augment=0.0, lr=0.005, compile="on")
    with pytest.raises(MFVCError, match=r"compile='on' on the CPU needs a C\+\+ compiler .*--compile off"):
        train_vae(BetaVAE(VAEConfig(latent_dim=4)), x, cfg, CPU, seed=0, progress=False)
