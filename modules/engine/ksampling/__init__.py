"""k-diffusion-faithful sampling math over a denoiser callable ``model(x, sigma_batch) -> denoised``.

``schedules`` builds sigma schedules (A1111's schedule types), ``samplers`` holds the sampler steps by A1111 name
(``dpm_solver``: DPM fast / DPM adaptive; ``restart``: Restart); ``common`` has their shared signature types.
"""
