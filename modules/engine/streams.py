"""Long-lived CUDA side streams: one per device and purpose, for the life of the process.

cuBLAS keeps a workspace (32 MiB on Hopper) for every pair of thread handle and stream it has run a matmul on, until
the process ends, allocated through PyTorch's allocator. A new stream per graph capture and per background compile
(as this engine made them before) added one workspace each time: up to the 32 streams of PyTorch's stream pool,
about 1 GB, on a server that meets many image sizes. And the capture stream's workspace, first allocated during a
capture, was allocated from that graph's private memory pool and kept the pool alive after its graphs were dropped
(``tests/gpu/results/mem_probe_compile_before-h200.json``: the ``--compile`` path's job peaked 69 MB above the eager
graph's, 44 MB of the dropped eager pool still held). With one stream per purpose each workspace is made once, and
outside any capture: the warm-up runs before a capture use the stream that the capture then records on. The streams
are process-wide state on purpose, as the workspaces they stand for are (a cached function, not an object's field:
each model load makes new graph and compile objects, and with them it would make new streams again).
"""

from __future__ import annotations

import functools

import torch

GRAPHS = "graphs"  # CUDA-graph warm-up runs and captures (engine/accel.py)
COMPILE = "compile"  # background compiles' runs (engine/compiling.py)


@functools.cache
def side_stream(device: torch.device, purpose: str) -> torch.cuda.Stream:
    """The stream for ``purpose`` on ``device`` (the same object on every call)."""
    return torch.cuda.Stream(device=device)
