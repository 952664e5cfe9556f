"""The UNet as a k-diffusion denoiser with A1111's classifier-free guidance, composable prompts and masking.

``CFGDenoiser(x, sigma) -> denoised`` is what every sampler in ``modules.engine.ksampling`` calls. Per call it:

1. asks its ``StepConds`` provider for the conditioning of the current model call (A1111 counts model calls, not
   sampler steps, when it reconstructs scheduled prompts: its ``CFGDenoiser.step``);
2. runs the UNet once over ``[x for every cond part…, x for every uncond]`` (A1111's batched cond/uncond), with
   ``c_in = 1/√(σ²+1)`` on the latent only, the 9-channel inpainting conditioning concatenated after it, and SDXL's
   pooled text embedding + size/crop ids as added conditioning;
3. turns the output into the denoised latent (eps: ``x − σ·ε``; v: ``x/(σ²+1) − v·σ/√(σ²+1)``);
4. combines: ``uncond + Σ weightᵢ·cfg·(condᵢ − uncond)`` per image (A1111's ``combine_denoised``); instruct-pix2pix
   models with an image CFG scale ≠ 1 add a third row set (uncond text, zero image) and combine as A1111's
   ``combine_denoised_for_edit_model``: ``blank + cfg·(cond − img) + image_cfg·(img − blank)``;
5. with a mask (img2img inpainting), keeps the init latent outside it: ``init·keep + denoised·repaint``.

Conds (``AND`` parts, images) of different token lengths are padded by repeating their last vector; cond and
uncond of different lengths run as two UNet calls (A1111's defaults, no ``pad_cond_uncond``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from modules.engine.previews import DenoiserRows


@dataclass(frozen=True)
class TextCond:
    """One prompt's conditioning: cross-attention context ``(L, C)``; SDXL: pooled embedding ``(P,)`` and time ids."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None


@dataclass(frozen=True)
class StepConds:
    """Conditioning of one model call for a batch of B images.

    Attributes:
            conds: Per image, its ``AND`` parts as (TextCond, weight).
        unconds: Per image, the negative prompt's TextCond.
    """

    conds: list[list[tuple[TextCond, float]]]
    unconds: list[TextCond]


@dataclass(frozen=True)
class MaskBlend:
    """Latent inpainting: ``init`` is kept where ``keep`` is 1 (``repaint = 1 − keep``)."""

    init: torch.Tensor
    keep: torch.Tensor

    def apply(self, latent: torch.Tensor) -> torch.Tensor:
        """``init·keep + latent·(1−keep)``."""
        return self.init * self.keep + latent * (1.0 - self.keep)


@dataclass(frozen=True)
class ModelParts:
    """What the denoiser needs from a model: its UNet, σ → t conversion, parameterisation and conditioning."""

    unet: torch.nn.Module
    sigma_to_t: Callable[[torch.Tensor], torch.Tensor]
    prediction_type: str
    conds: Callable[[int], StepConds]


@dataclass(frozen=True)
class SkipUncond:
    """A1111's "Negative Guidance minimum sigma" (NGMS, ``s_min_uncond``).

    Below ``min_sigma`` the uncond pass is skipped on every other model call (every call with ``all_steps``) and the
    cond prediction stands in for it. For A1111's timestep samplers the level compared is the timestep, as in A1111.
    """

    min_sigma: float = 0.0
    all_steps: bool = False


@dataclass
class RefinerSwitch:
    """A1111's refiner: once ``(999 − t(σ)) / 1000 >= switch_at``, the rest of sampling uses another model.

    ``t(σ)`` is the base model's nearest discrete timestep (A1111's default, not "switch by sampling steps").
    ``load`` returns the refiner's parts, or None when the refiner is the base model itself (no switch).
    """

    switch_at: float
    base_sigmas: torch.Tensor
    load: Callable[[], ModelParts | None]
    switched: bool = False

    def due(self, sigma: torch.Tensor) -> bool:
        """Whether sampling at ``sigma`` has reached the switch point."""
        if self.switched:
            return False
        return self.due_at(int(torch.argmin((self.base_sigmas.to(sigma.device) - sigma.float()).abs())))

    def due_at(self, timestep: int) -> bool:
        """Whether sampling at ``timestep`` has reached the switch point."""
        return not self.switched and (999 - timestep) / 1000 >= self.switch_at


class KSpace:
    """k-diffusion's view of the UNet: ``x = x0 + σ·ε``; the UNet sees ``x/√(σ²+1)`` at ``t(σ)``; out comes x0."""

    mask_before = False

    def __init__(self, sigma_to_t: Callable[[torch.Tensor], torch.Tensor], v_prediction: bool) -> None:
        self.sigma_to_t = sigma_to_t
        self.v_prediction = v_prediction

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep for each row's σ."""
        return self.sigma_to_t(sigma)

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The UNet's latent input (``c_in · x``)."""
        return x * (1.0 / (sigma**2 + 1.0) ** 0.5)[:, None, None, None]

    def output(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The denoised latent from the UNet's prediction (eps: ``x − σ·ε``; v: ``x/(σ²+1) − v·σ/√(σ²+1)``)."""
        sig = sigma[:, None, None, None].float()
        if self.v_prediction:
            return x.float() / (sig**2 + 1.0) - pred * sig / (sig**2 + 1.0) ** 0.5
        return x.float() - pred * sig

    def refiner_due(self, refiner: RefinerSwitch, sigma: torch.Tensor) -> bool:
        """Whether the refiner takes over at this noise level."""
        return refiner.due(sigma)

    def switched(self, parts: ModelParts) -> KSpace:
        """The same view for the refiner's model."""
        return KSpace(parts.sigma_to_t, parts.prediction_type == "v_prediction")


class LCMSpace(KSpace):
    """A1111's LCM denoiser: 50 timesteps (``20k + 19``), the nearest per σ, and LCM's boundary condition.

    The output is ``c_skip·x + c_out·x0`` with ``c_skip = ¼/(τ²+¼)``, ``c_out = τ/√(τ²+¼)``, ``τ = 10·t``.

    As in A1111, the boundary condition mixes x0 with the k-diffusion latent ``x`` (not the unit-variance one); at
    these timesteps ``c_skip`` is below 1e-5.
    """

    def __init__(self, lcm_sigmas: torch.Tensor, v_prediction: bool, skip: int = 20) -> None:
        super().__init__(self._timestep, v_prediction)
        self.log_sigmas = lcm_sigmas.log()
        self.skip = skip

    def _timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigmas = self.log_sigmas.to(sigma.device)
        nearest = (sigma.float().log() - log_sigmas[:, None]).abs().argmin(dim=0)
        return (nearest * self.skip + (self.skip - 1)).view(sigma.shape)

    def output(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The LCM-scaled denoised latent."""
        denoised = super().output(x, sigma, t, pred)
        tau = t.float()[:, None, None, None] * 10.0
        c_skip = 0.25 / (tau**2 + 0.25)
        c_out = tau / (tau**2 + 0.25) ** 0.5
        return c_out * denoised + c_skip * x.float()

    def switched(self, parts: ModelParts) -> KSpace:
        """The refiner keeps LCM's timesteps."""
        return LCMSpace(self.log_sigmas.exp(), parts.prediction_type == "v_prediction", self.skip)


class TimestepSpace:
    """The view of A1111's timestep samplers (DDIM, PLMS, UniPC): ε of the variance-preserving ``x_t`` at timestep t.

    The level is the (possibly fractional) timestep itself; a v model's output is turned into ε with ᾱ at ``int(t)``
    (A1111's ``CompVisTimestepsVDenoiser``). Inpainting blends the init latent in *before* the UNet call (A1111's
    ``mask_before_denoising`` for these samplers).
    """

    mask_before = True

    def __init__(self, alphas_cumprod: torch.Tensor, v_prediction: bool) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.v_prediction = v_prediction

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The level is the timestep."""
        return t

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` goes in unscaled."""
        return x

    def output(self, x: torch.Tensor, t: torch.Tensor, _t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """ε (from v: ``√ᾱ·v + √(1−ᾱ)·x``)."""
        if not self.v_prediction:
            return pred
        a = self.alphas_cumprod[t.long().to(self.alphas_cumprod.device)][:, None, None, None].to(x.device)
        return a.sqrt() * pred + (1 - a).sqrt() * x.float()

    def refiner_due(self, refiner: RefinerSwitch, t: torch.Tensor) -> bool:
        """Whether the refiner takes over at this timestep."""
        return refiner.due_at(int(t.max()))

    def switched(self, parts: ModelParts) -> TimestepSpace:
        """The same view for the refiner's model (SDXL models share one noise schedule)."""
        return TimestepSpace(self.alphas_cumprod, parts.prediction_type == "v_prediction")


Space = KSpace | TimestepSpace


class CFGDenoiser:
    """k-diffusion-style model wrapper over the UNet (see the module docstring)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        sigma_to_t: Callable[[torch.Tensor], torch.Tensor],
        prediction_type: str,
        conds: Callable[[int], StepConds],
        cfg_scale: float,
        *,
        image_cond: torch.Tensor | None = None,
        mask: MaskBlend | None = None,
        refiner: RefinerSwitch | None = None,
        image_cfg_scale: float | None = None,
        space: Space | None = None,
        keep_uncond: bool = False,
        skip_uncond: SkipUncond | None = None,
        rows: DenoiserRows | None = None,
    ) -> None:
        """Wrap ``unet``; ``step`` counts model calls from 0.

        Args:
            unet: The model's UNet (possibly with a CUDA-graph forward).
            sigma_to_t: The discrete schedule's σ → timestep conversion.
            prediction_type: ``"epsilon"`` or ``"v_prediction"``.
            conds: Model call index → conditioning (prompt editing/alternation decide it per call).
            cfg_scale: Classifier-free guidance scale.
            image_cond: 9-channel inpainting models: ``(B, 5, h, w)`` mask + masked-image latents; instruct-pix2pix
                models: ``(B, 4, h, w)`` source-image latents (unscaled).
            mask: Latent masking for inpainting.
            refiner: Switch to another model part-way (A1111's refiner).
            image_cfg_scale: instruct-pix2pix image guidance; None or 1 guides by text only (A1111).
            space: How levels, inputs and outputs are read (default: k-diffusion over ``sigma_to_t``).
            keep_uncond: Keep the unconditional prediction of each call in ``last_uncond`` (DDIM CFG++).
            skip_uncond: NGMS: when to skip the uncond pass at low noise.
            rows: Where each call's own cond and uncond predictions are kept (a live preview of the prompt's).
        """
        self.unet = unet
        self.space: Space = space or KSpace(sigma_to_t, prediction_type == "v_prediction")
        self.keep_uncond = keep_uncond
        self.last_uncond: torch.Tensor | None = None
        self.skip_uncond = skip_uncond or SkipUncond()
        self.rows = rows
        self.conds = conds
        self.cfg_scale = cfg_scale
        self.image_cond = image_cond
        self.mask = mask
        self.refiner = refiner
        self.edit_scale = image_cfg_scale if image_cond is not None and image_cfg_scale not in (None, 1.0) else None
        self.step = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        """Denoise the batch ``x`` at noise levels ``sigma`` (one per image; timesteps for a ``TimestepSpace``)."""
        if self.refiner is not None and self.space.refiner_due(self.refiner, sigma[0]):
            self._switch(self.refiner)
        if self.mask is not None and self.space.mask_before:
            x = self.mask.apply(x)
        call = self.step
        step = self.conds(call)
        self.step += 1
        if x.shape[0] != len(step.conds):
            raise ValueError(f"conditioning for {len(step.conds)} images, latents for {x.shape[0]}")
        parts = [(i, c, w) for i, image_conds in enumerate(step.conds) for c, w in image_conds]
        if self._skips_uncond(call, sigma):
            return self._without_uncond(x, sigma, parts)
        # CFG 1 with one unit-weight part per image is exactly the cond prediction: the uncond pass can be skipped
        plain = self.cfg_scale == 1.0 and all(len(p) == 1 and p[0][1] == 1.0 for p in step.conds)
        plain = plain and self.edit_scale is None and not self.keep_uncond
        uncond_rows = [] if plain else step.unconds
        cond_owners = [i for i, _, _ in parts]
        cond_out = self._model(x, sigma, _pad_to_longest([c for _, c, _ in parts]), cond_owners, list(uncond_rows))
        if self.rows is not None:  # views, no copies: the next call makes new tensors
            n, u = len(parts), len(uncond_rows)
            self.rows.record(cond_out[:n], cond_owners, cond_out[n : n + u] if u else None)
        if self.edit_scale is not None:
            n, u = len(parts), len(uncond_rows)
            image, blank = cond_out[n : n + u], cond_out[n + u :]
            denoised = blank + (image - blank) * self.edit_scale
            for k, (i, _, weight) in enumerate(parts):
                denoised[i] += (cond_out[k] - image[i]) * (weight * self.cfg_scale)
        elif not uncond_rows:
            denoised = torch.zeros_like(x)
            for k, (i, _, weight) in enumerate(parts):
                denoised[i] += cond_out[k] * weight
        else:
            uncond = cond_out[len(parts) :]
            cond_out = cond_out[: len(parts)]
            if self.keep_uncond:
                self.last_uncond = uncond
            denoised = uncond.clone()
            for k, (i, _, weight) in enumerate(parts):
                denoised[i] += (cond_out[k] - uncond[i]) * (weight * self.cfg_scale)
        return self.mask.apply(denoised) if self.mask is not None and not self.space.mask_before else denoised

    def _skips_uncond(self, call: int, sigma: torch.Tensor) -> bool:
        """A1111's NGMS test for model call ``call`` (not for instruct-pix2pix guidance)."""
        skip = self.skip_uncond
        if skip.min_sigma <= 0 or self.edit_scale is not None or not (call % 2 or skip.all_steps):
            return False
        return float(sigma[0]) < skip.min_sigma

    def _without_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor, parts: list[tuple[int, TextCond, float]]
    ) -> torch.Tensor:
        """Cond rows only; each image's first part stands in for its uncond, combined at scale 1 (A1111)."""
        cond_out = self._model(x, sigma, _pad_to_longest([c for _, c, _ in parts]), [i for i, _, _ in parts], [])
        first = {}
        for k, (i, _, _) in enumerate(parts):
            first.setdefault(i, k)
        stand_in = torch.stack([cond_out[first[i]] for i in range(x.shape[0])])
        if self.rows is not None:
            self.rows.record(cond_out, [i for i, _, _ in parts], None)
        if self.keep_uncond:
            self.last_uncond = stand_in
        denoised = stand_in.clone()
        for k, (i, _, weight) in enumerate(parts):
            denoised[i] += (cond_out[k] - stand_in[i]) * weight
        return self.mask.apply(denoised) if self.mask is not None and not self.space.mask_before else denoised

    def _switch(self, refiner: RefinerSwitch) -> None:
        """Continue with the refiner's UNet and conditioning (the step counter and sampler state carry on)."""
        refiner.switched = True
        parts = refiner.load()
        if parts is None:
            return
        self.unet, self.conds = parts.unet, parts.conds
        self.space = self.space.switched(parts)

    def _model(
        self, x: torch.Tensor, sigma: torch.Tensor, conds: list[TextCond], owners: list[int], unconds: list[TextCond]
    ) -> torch.Tensor:
        """Denoised predictions for the cond rows then the uncond rows (float32).

        Cond and uncond of the same token length share one UNet call (A1111's batched cond/uncond); otherwise they
        run in two calls, as A1111 does without ``pad_cond_uncond``. With image guidance the uncond rows run twice,
        the second time with a zero image (rows from ``blank_from`` on).
        """
        uncond_owners = list(range(len(unconds)))
        if self.edit_scale is not None:
            unconds, uncond_owners = unconds + unconds, uncond_owners + uncond_owners
        blank = len(unconds) // 2 if self.edit_scale is not None else None
        if not unconds or conds[0].context.shape[0] == unconds[0].context.shape[0]:
            shift = None if blank is None else len(conds) + blank
            return self._call(x, sigma, conds + unconds, owners + uncond_owners, shift)
        return torch.cat(
            [self._call(x, sigma, conds, owners), self._call(x, sigma, unconds, uncond_owners, blank)],
        )

    def _call(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        rows: list[TextCond],
        owners: list[int],
        blank_from: int | None = None,
    ) -> torch.Tensor:
        """One UNet call over ``rows`` (row k denoises image ``owners[k]``; rows from ``blank_from`` get no image)."""
        x, sigma = _rows(x, owners), _rows(sigma, owners)
        dtype = next(self.unet.parameters()).dtype
        model_in = self.space.model_input(x, sigma)
        if self.image_cond is not None:
            image_cond = _rows(self.image_cond, owners).to(model_in)
            if blank_from is not None:
                image_cond = torch.cat([image_cond[:blank_from], torch.zeros_like(image_cond[blank_from:])])
            model_in = torch.cat([model_in, image_cond], dim=1)
        context = torch.stack([r.context for r in rows])
        added = None
        if rows[0].pooled is not None:
            pooled = torch.stack([r.pooled for r in rows])
            ids = torch.stack([r.time_ids.to(pooled) for r in rows])
            added = {"text_embeds": pooled.to(dtype), "time_ids": ids.to(dtype)}
        t = self.space.timestep(sigma).to(x.device)
        out = self.unet(model_in.to(dtype), t, encoder_hidden_states=context.to(dtype), added_cond_kwargs=added)
        pred = out.sample.float() if hasattr(out, "sample") else out[0].float()
        return self.space.output(x, sigma, t, pred)


def _rows(t: torch.Tensor, owners: list[int]) -> torch.Tensor:
    """``t[owners]`` without an index tensor (a host → device copy, which would wait for the GPU every step)."""
    return torch.cat([t[i : i + 1] for i in owners]) if owners != list(range(t.shape[0])) else t


def _pad_to_longest(rows: list[TextCond]) -> list[TextCond]:
    """Conds of different token lengths padded by repeating their last vector (A1111's multicond batch)."""
    longest = max(r.context.shape[0] for r in rows)
    padded = []
    for r in rows:
        missing = longest - r.context.shape[0]
        if missing:
            r = TextCond(torch.cat([r.context, r.context[-1:].repeat(missing, 1)]), r.pooled, r.time_ids)
        padded.append(r)
    return padded
