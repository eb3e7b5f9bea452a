"""Networks of MFVC: attention modules, the Res-VAE-Block and the β-VAE."""

from .attention import CBAM, SimAM, make_attention
from .blocks import ResVAEBlock
from .vae import BetaVAE, Decoder, Encoder, VAEConfig, vae_loss

__all__ = ["CBAM", "SimAM", "make_attention", "ResVAEBlock", "BetaVAE", "Decoder", "Encoder", "VAEConfig", "vae_loss"]
