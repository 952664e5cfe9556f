import os
import subprocess
import sys
import time

import pytest
import torch

from modules.engine.accel import disable_cuda_graphs, enable_cuda_graphs


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


def test_not_installed_off_cuda():
    module = Tiny()
    assert enable_cuda_graphs(module) is False
    assert "forward" not in module.__dict__
    disable_cuda_graphs(module)  # harmless when nothing is installed
    assert module(torch.ones(1, 4)).shape == (1, 4)


def test_loader_option_default_on():
    from modules.engine.loader import LoadOptions

    assert LoadOptions().cuda_graphs is True


def test_graph_cache_takes_a_new_pool_once_its_last_graph_is_gone():
    """PyTorch releases a graph pool with its last graph; capturing into it again fails (seen on the H200)."""
    from modules.engine.accel import _GraphCache

    pools = iter(range(100))
    cache = _GraphCache(2, lambda: next(pools))
    assert cache.pool == 0
    cache.put(("512", False), "eager 512")
    cache.put(("768", False), "eager 768")
    cache.drop(("512", False))  # another graph still holds the pool
    assert cache.pool == 0 and cache.kept() == [("768", False)]
    cache.drop(("768", False))  # the last one: its pool is released with it
    assert cache.pool == 1 and cache.kept() == []
    cache.drop(("768", False))  # nothing there: nothing changes
    assert cache.pool == 1
    for size in ("512", "768", "1024"):  # at most two kept, least recently used dropped; the pool stays
        cache.put((size, True), size)
    assert cache.kept() == [("768", True), ("1024", True)] and cache.pool == 1
    assert cache.get(("768", True)) == "768" and cache.kept() == [("1024", True), ("768", True)]
    assert cache.get(("512", True)) is None
    cache.clear()
    assert cache.kept() == [] and cache.pool == 2


def test_background_compiler_compiles_once_per_signature_and_reports_ready():
    from modules.engine.compiling import FAILED, READY, BackgroundCompiler

    calls = []
    compiles = []

    def fake_compile(fn, **options):
        assert options == {"fullgraph": True, "dynamic": False}
        compiles.append(fn)

        def compiled(*args):
            calls.append(args)
            return fn(*args)

        return compiled

    def runner(fn, inputs):
        return fn(inputs["sample"])

    compiler = BackgroundCompiler(lambda x: x * 2, runner, compile_fn=fake_compile)
    assert not compiles  # torch.compile (its dynamo/inductor imports) waits for the first background compile
    inputs = {"sample": torch.ones(2, 3)}
    assert compiler.state(("a",)) is None
    compiler.request(("a",), inputs)
    compiler.request(("a",), inputs)  # already queued: no second compile
    assert compiler.state(("a",)) == "pending" and not calls  # queued until the job ends
    compiler.start_queued()
    assert compiler.wait(30)
    assert compiler.state(("a",)) == READY and len(calls) == 2  # compile call + the check call
    assert torch.equal(compiler.compiled(torch.ones(1)), torch.full((1,), 2.0))
    assert ("a",) in compiler.seconds
    compiler.request(("c",), {"sample": torch.ones(4)})  # another size: compiled by the same compiled function
    assert compiler.wait(30) and compiler.state(("c",)) == READY and len(compiles) == 1

    def broken_compile(fn, **options):
        def compiled(*args):
            raise RuntimeError("inductor: no C++ compiler")

        return compiled

    failing = BackgroundCompiler(lambda x: x, runner, compile_fn=broken_compile)
    failing.request(("b",), inputs)
    assert failing.wait(30) and failing.state(("b",)) == FAILED


def test_background_compile_shortens_the_switch_interval_until_the_last_compile_ends():
    import sys
    import threading

    from modules.engine.compiling import READY, BackgroundCompiler
    from modules.engine.switch_interval import SHORT_SWITCH_INTERVAL_S

    release = threading.Event()
    seen = []

    def slow_compile(fn, **options):
        def compiled(*args):
            seen.append(sys.getswitchinterval())
            release.wait(30)
            return fn(*args)

        return compiled

    before = sys.getswitchinterval()
    assert before > SHORT_SWITCH_INTERVAL_S
    compiler = BackgroundCompiler(lambda x: x + 1, lambda fn, inputs: fn(inputs["sample"]), compile_fn=slow_compile)
    compiler.request(("a",), {"sample": torch.ones(1)})
    compiler.request(("b",), {"sample": torch.ones(2)})
    compiler.start_queued()  # two compiles at once, as two sizes queued by one job
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    short = pytest.approx(SHORT_SWITCH_INTERVAL_S)  # the interpreter stores it in microseconds
    assert seen == [short, short] and sys.getswitchinterval() == short
    release.set()
    assert compiler.wait(30)
    assert compiler.state(("a",)) == compiler.state(("b",)) == READY
    assert sys.getswitchinterval() == before  # restored once the last one ended


def test_compile_option_reaches_the_loader():
    from modules.engine.loader import LoadOptions
    from modules.flags import parse_flags

    assert LoadOptions().compile is False
    assert parse_flags(["--compile"], environ={}).compile is True
    assert parse_flags(["--bf16"], environ={}).bf16 is True and parse_flags([], environ={}).bf16 is False


def run_interpreted(code: str) -> float:
    """Run ``code`` in a fresh process with Triton's CPU interpreter on; return the number it prints last."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


def test_group_norm_kernel_matches_pytorch_in_tritons_interpreter():
    pytest.importorskip("triton")
    code = """
import torch
from modules.engine.group_norm import group_norm_nhwc
torch.manual_seed(0)
worst = 0.0
for groups, channels, shape in ((32, 320, (2, 8, 8)), (32, 960, (1, 5, 7)), (8, 40, (3, 4, 9)), (4, 8, (1, 40, 41))):
    gn = torch.nn.GroupNorm(groups, channels)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    x = (torch.randn(shape[0], channels, *shape[1:]) * 3 + 1).to(memory_format=torch.channels_last)
    add = torch.randn(shape[0], channels)
    with torch.no_grad():
        got = group_norm_nhwc(x, gn)
        ref = torch.nn.functional.group_norm(x, groups, gn.weight, gn.bias, gn.eps)
        got_fused = group_norm_nhwc(x, gn, add, silu=True)
        ref_fused = torch.nn.functional.silu(
            torch.nn.functional.group_norm(x + add[:, :, None, None], groups, gn.weight, gn.bias, gn.eps)
        )
        got_silu = group_norm_nhwc(x, gn, silu=True)
        for splits in (2, 3):  # the split form: per-slice sums, then per-slice normalisation
            got_split = group_norm_nhwc(x, gn, add, silu=True, splits=splits)
            worst = max(worst, float((got_split - ref_fused).abs().max()))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert got_fused.is_contiguous(memory_format=torch.channels_last)
    worst = max(worst, float((got - ref).abs().max()), float((got_fused - ref_fused).abs().max()))
    worst = max(worst, float((got_silu - torch.nn.functional.silu(ref)).abs().max()))
print(worst)
"""
    assert run_interpreted(code) < 1e-5


def test_split_count_fills_the_gpu_only_when_pairs_are_few():
    from modules.engine.group_norm import TARGET_PROGRAMS, split_count

    assert split_count(1024, 4096, 256) == (1, 4096)  # batch 16 × 64 groups: enough programs already
    parts, rows = split_count(64, 4096, 256)  # SD1.5 batch 1 (CFG: 2 images × 32 groups) at 64×64
    assert parts > 1 and rows % 256 == 0 and parts * rows >= 4096 and (parts - 1) * rows < 4096
    assert 64 * parts <= 2 * TARGET_PROGRAMS
    assert split_count(64, 64, 256) == (1, 256)  # one block of rows: nothing to split


def test_group_norm_install_needs_cuda_and_leaves_cpu_modules_alone():
    from modules.engine import group_norm

    module = torch.nn.Sequential(torch.nn.GroupNorm(2, 4))
    assert group_norm.install(module) == (0 if not torch.cuda.is_available() else 1)
    x = torch.randn(1, 4, 3, 3).to(memory_format=torch.channels_last)
    torch.testing.assert_close(module(x), torch.nn.functional.group_norm(x, 2, module[0].weight, module[0].bias))
    group_norm.uninstall(module)
    assert "forward" not in module[0].__dict__


def test_geglu_gate_kernel_matches_pytorch_in_tritons_interpreter():
    pytest.importorskip("triton")
    code = """
import torch
from modules.engine.geglu import geglu_gate
torch.manual_seed(0)
worst = 0.0
for shape in ((2, 7, 2 * 1280), (3, 2 * 40), (1, 33, 2 * 300), (17, 2 * 256)):
    h = torch.randn(*shape) * 3
    value, gate = h.chunk(2, dim=-1)
    got = geglu_gate(h)
    ref = value * torch.nn.functional.gelu(gate)
    assert got.shape == ref.shape and got.is_contiguous()
    worst = max(worst, float((got - ref).abs().max()))
print(worst)
"""
    assert run_interpreted(code) < 1e-4


def test_geglu_install_needs_cuda_and_leaves_cpu_modules_alone():
    from modules.engine import geglu
    from modules.engine.nets.unet_blocks import GEGLU

    torch.manual_seed(0)
    layer = GEGLU(8, 16)
    torch.nn.init.normal_(layer.proj.weight)
    torch.nn.init.normal_(layer.proj.bias)
    module = torch.nn.Sequential(layer)
    assert geglu.install(module) == (0 if not torch.cuda.is_available() else 1)
    x = torch.randn(2, 5, 8)
    value, gate = torch.nn.functional.linear(x, layer.proj.weight, layer.proj.bias).chunk(2, dim=-1)
    torch.testing.assert_close(module(x), value * torch.nn.functional.gelu(gate))
    geglu.uninstall(module)
    assert "gate" not in layer.__dict__


def test_kernel_wrappers_hold_their_modules_weakly_and_run_eagerly_off_cuda():
    """The per-instance forwards of the GroupNorm and GEGLU kernels make no cycle with their module."""
    import gc
    import weakref

    from modules.engine.geglu import _Gate
    from modules.engine.group_norm import _Forward
    from modules.engine.nets.unet_blocks import GEGLU

    norm = torch.nn.GroupNorm(2, 4)
    norm.forward = _Forward(norm)
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(norm(x), torch.nn.functional.group_norm(x, 2, norm.weight, norm.bias, norm.eps))
    gate = GEGLU(4, 6)
    for tensor in gate.parameters():  # our layers leave their weights uninitialised (they come from a file)
        torch.nn.init.normal_(tensor)
    expected = gate(torch.ones(2, 4))
    gate.gate = _Gate(gate)
    torch.testing.assert_close(gate(torch.ones(2, 4)), expected)
    refs = [weakref.ref(norm), weakref.ref(gate)]
    gc.disable()
    try:
        del norm, gate
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_tritons_installation_hash_is_computed_on_a_thread_and_cached_for_the_first_launch():
    """Triton's first launch in a process hashes its sources (0.4 s on the H200); the load starts that early."""
    pytest.importorskip("triton")
    from triton.runtime import cache

    from modules.engine.accel import hash_triton_sources

    cache.triton_key.cache_clear()
    thread = hash_triton_sources()
    assert thread.name == "triton-key" and thread.daemon
    thread.join(60)
    info = cache.triton_key.cache_info()
    assert (info.misses, info.currsize) == (1, 1)  # computed once, on that thread
    assert cache.triton_key() and cache.triton_key.cache_info().hits == info.hits + 1  # the launch finds it cached


def test_a_broken_triton_leaves_the_hash_thread_quietly(monkeypatch):
    """The thread is only a head start: whatever Triton raises stays in it (no traceback on the console)."""
    import importlib
    import threading

    from modules.engine import accel

    def broken(name):
        raise RuntimeError("libtriton.so: cannot open shared object file")

    unhandled = []
    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    accel.hash_triton_sources().join(10)
    assert unhandled == []


def test_prepare_vae_leaves_a_cpu_vae_as_it_is():
    from modules.engine.accel import prepare_vae
    from modules.engine.nets.vae import AutoencoderKL

    vae = AutoencoderKL({"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4})
    assert prepare_vae(vae, "cpu") is False
    assert vae.decoder.conv_in.weight.is_contiguous()
    assert "norm_silu" not in vae.decoder.mid.block_1.norm1.__dict__
