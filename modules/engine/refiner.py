"""A1111's refiner: another checkpoint takes over sampling once ``refiner_switch_at`` of the schedule is done.

The switch happens inside the sampler loop (its state carries on), at the first model call whose σ maps to a
timestep t with ``(999 − t) / 1000 >= switch_at`` (A1111's default; not "switch by sampling steps"). With hires fix,
the refiner runs in the second pass (A1111's default ``hires_fix_refiner_pass``). The refiner's conditioning is
encoded with its own text encoder(s) (SDXL refiner: aesthetic score 6 / 2.5), and the images of a batch that
switched are decoded with the refiner's VAE. Infotext: ``Refiner: <name> [<hash>]``, ``Refiner switch at``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.engine import kloop
from modules.engine.denoiser import ModelParts, RefinerSwitch
from modules.engine.loader import LoadedModel
from modules.engine.sampling import DiscreteModel
from modules.engine.types import GenerationOptions, GenerationRequest
from modules.errors import InvalidRequestError

NO_REFINER = (None, "", "None")


def wanted(request: GenerationRequest) -> bool:
    """Whether the request names a refiner checkpoint."""
    return request.refiner_checkpoint not in NO_REFINER


@dataclass
class RefinerRun:
    """The refiner of one job: loaded on first use, switched into each batch's sampling."""

    name: str
    switch_at: float
    loader: Callable[[str], LoadedModel]
    model: LoadedModel | None = None
    used: bool = False
    _last: RefinerSwitch | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        request: GenerationRequest,
        loader: Callable[[str], LoadedModel] | None,
    ) -> RefinerRun | None:
        """The job's refiner, or None without one.

        Raises:
            InvalidRequestError: For a switch point outside (0, 1], or no way to load checkpoints.
        """
        if not wanted(request):
            return None
        problems = []
        if not 0 < request.refiner_switch_at <= 1:
            problems.append(f"refiner_switch_at must be above 0 and at most 1, got {request.refiner_switch_at}")
        if loader is None:
            problems.append("refiner_checkpoint: this caller cannot load a second checkpoint")
        if problems:
            raise InvalidRequestError("; ".join(problems))
        assert loader is not None
        return cls(str(request.refiner_checkpoint), float(request.refiner_switch_at), loader)

    def switch(
        self,
        base: LoadedModel,
        options: GenerationOptions,
        prompts: tuple[str, str],
        batch: int,
        steps: int,
        size: tuple[int, int],
        hires_steps: int | None = None,
    ) -> RefinerSwitch:
        """The switch for one batch's sampling."""

        def load() -> ModelParts | None:
            if self.model is None:
                self.model = self.loader(self.name)
            if Path(self.model.checkpoint.filename) == Path(base.checkpoint.filename):
                return None  # the refiner is the model already sampling: nothing to switch (A1111)
            self.used = True
            return kloop.refiner_parts(self.model, options, prompts, batch, steps, size, hires_steps)

        base_sigmas = DiscreteModel.from_config(base.components.schedule).sigmas
        self._last = RefinerSwitch(self.switch_at, base_sigmas, load)
        return self._last

    def decoder(self, base: LoadedModel) -> LoadedModel:
        """The model whose VAE decodes the last batch: the refiner if that batch switched to it."""
        switched = self._last is not None and self._last.switched and self.used and self.model is not None
        return self.model if switched and self.model is not None else base

    def infotext(self) -> dict[str, Any]:
        """``Refiner`` and ``Refiner switch at`` once the refiner has been used."""
        if not self.used or self.model is None:
            return {}
        ckpt = self.model.checkpoint
        title = f"{ckpt.name_for_extra} [{ckpt.shorthash}]" if ckpt.shorthash else ckpt.name_for_extra
        switch_at = int(self.switch_at) if float(self.switch_at).is_integer() else self.switch_at
        return {"Refiner": title, "Refiner switch at": switch_at}
