"""Record what the UNet is called with (a test helper wrapping ``model.components.unet.forward`` via monkeypatch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class UNetCalls:
    """Per UNet call: the first row's timestep and the number of rows."""

    timesteps: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


def record_unet_calls(model: Any, monkeypatch: Any) -> UNetCalls:
    """Wrap the model's UNet forward for the test's duration and return the record it fills."""
    calls = UNetCalls()
    forward = model.components.unet.forward

    def recording(sample: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        calls.timesteps.append(timestep.flatten()[0].item())
        calls.rows.append(sample.shape[0])
        return forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(model.components.unet, "forward", recording)
    return calls
