"""Tell eps- from v-prediction for an SD2 UNet without a yaml, by A1111's probe (one UNet call on a tiny input).

A1111 (``sd_models_config.is_using_v_parameterization_for_sd2``) feeds a constant latent of 0.5 at the last training
timestep (t = 999, almost pure noise) with a constant context. An eps model predicts the noise, which at t = 999 is
nearly the input itself, so ``mean(output - input)`` stays near 0. A v model predicts
``v = alpha_t * eps - sigma_t * x0`` with ``sigma_t`` ≈ 1, which for this input lands well below the input: A1111
calls the model v-pred when the mean difference is below -1. The probe is one UNet call on a 1×C×8×8 latent with a
2-token context: cheap at any model size. It is only as meaningful as the weights: a randomly initialised UNet gives
an arbitrary answer (in practice near 0, so "epsilon").
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

PROBE_TIMESTEP = 999
PROBE_VALUE = 0.5
PROBE_THRESHOLD = -1.0
PROBE_LATENT_SIZE = 8
PROBE_CONTEXT_TOKENS = 2

UNetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def probe_mean_difference(
    unet_call: UNetCall, *, in_channels: int, context_dim: int, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """Run the probe and return ``mean(output - input)``.

    Args:
        unet_call: ``f(latents, timesteps, context) -> prediction`` (the UNet adapted by :func:`unet_caller`).
        in_channels: Latent channels the UNet takes.
        context_dim: Width of the cross-attention context.
        device: Where to run.
        dtype: Dtype of the inputs (match the UNet's).
    """
    shape = (1, in_channels, PROBE_LATENT_SIZE, PROBE_LATENT_SIZE)
    latents = torch.full(shape, PROBE_VALUE, device=device, dtype=dtype)
    context = torch.full((1, PROBE_CONTEXT_TOKENS, context_dim), PROBE_VALUE, device=device, dtype=dtype)
    timesteps = torch.tensor([PROBE_TIMESTEP], device=device)
    with torch.inference_mode():
        out = unet_call(latents, timesteps, context)
    return float((out.float() - latents.float()).mean().cpu())


def unet_caller(unet: torch.nn.Module) -> UNetCall:
    """Adapt the UNet to the probe's call signature (no added conditioning)."""

    def call(latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return unet(latents, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    return call


def probe_prediction_type(unet: torch.nn.Module) -> str:
    """Return ``"v_prediction"`` or ``"epsilon"`` for an SD2 UNet, by the probe described in the module docstring."""
    param = next(unet.parameters())
    difference = probe_mean_difference(
        unet_caller(unet),
        in_channels=int(unet.config.in_channels),
        context_dim=int(unet.config.cross_attention_dim),
        device=str(param.device),
        dtype=param.dtype,
    )
    result = "v_prediction" if difference < PROBE_THRESHOLD else "epsilon"
    logger.info("SD2 prediction-type probe: mean(out - in) = %.3f -> %s", difference, result)
    return result
