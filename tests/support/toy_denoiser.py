"""A small deterministic denoiser and SD1's noise schedule config, for comparing samplers on CPU."""

import torch

SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


class ToyDenoiser(torch.nn.Module):
    """A fixed random conv net in sigma space: deterministic, non-linear, sigma-dependent."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(4, 4, 3, 3, generator=gen) * 0.2)
        self.b = torch.nn.Parameter(torch.randn(4, 4, 1, 1, generator=gen) * 0.2)

    def forward(self, x, sigma):
        c_in = (1 / (sigma**2 + 1) ** 0.5)[:, None, None, None]
        h = torch.tanh(torch.nn.functional.conv2d(x * c_in, self.a, padding=1))
        eps = torch.nn.functional.conv2d(h, self.b) + x * c_in * 0.5
        return x - eps * sigma[:, None, None, None]
