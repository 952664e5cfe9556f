"""Layer rules of DESIGN.md §4 and the size cap of §6, checked on the source with ast."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "modules"
HEAVY = {"torch", "diffusers", "transformers", "safetensors", "accelerate"}
WEB = {"gradio", "fastapi", "starlette", "uvicorn"}

# layer → (banned third-party roots, banned modules.* prefixes, allowed modules.* prefixes or None = any)
RULES = {
    # the engine runs its own networks and tokenizer: diffusers/transformers are test/benchmark references only
    "engine": (
        WEB | {"diffusers", "transformers", "accelerate"},
        ("modules.settings", "modules.jobs", "modules.context", "modules.ui", "modules.api"),
    ),
    "ui": (HEAVY, ("modules.api",)),
    "api": (HEAVY | {"gradio"}, ("modules.ui",)),
    "jobs": (HEAVY | WEB, ("modules.engine", "modules.context", "modules.ui", "modules.api")),
    "settings": (HEAVY | WEB, ("modules.engine", "modules.jobs", "modules.context", "modules.ui", "modules.api")),
    "errors": (HEAVY | WEB, ("modules.",)),
    "flags": (HEAVY | WEB, ("modules.engine", "modules.jobs", "modules.context", "modules.ui", "modules.api")),
    "context": (WEB, ("modules.ui", "modules.api")),
    "generation_options": (HEAVY | WEB, ("modules.jobs", "modules.context", "modules.ui", "modules.api")),
    "outputs": (WEB, ("modules.ui", "modules.api")),
    "version": (HEAVY | WEB, ("modules.",)),
    # stdlib only (it probes "import torch" on purpose): the launchers run it before anything is installed
    "launch_check": (WEB | {"diffusers", "transformers", "pydantic", "PIL", "packaging"}, ("modules.",)),
}
# ui and api may use only these engine modules (types carry no ML imports).
ENGINE_ALLOWED_FOR_WEB = ("modules.engine.types",)


def layer_of(path: Path) -> str:
    rel = path.relative_to(MODULES)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.append(node.module or "")
    return names


SOURCES = sorted(MODULES.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_rules(path):
    layer = layer_of(path)
    if layer not in RULES:
        pytest.skip(f"no rule for {layer}")
    banned_roots, banned_prefixes = RULES[layer]
    for name in imports_of(path):
        root = name.split(".")[0]
        assert root not in banned_roots, f"{path.relative_to(ROOT)} imports {name} (layer {layer})"
        for prefix in banned_prefixes:
            assert not name.startswith(prefix), f"{path.relative_to(ROOT)} imports {name} (layer {layer})"
        if layer in ("ui", "api") and name.startswith("modules.engine"):
            assert name in ENGINE_ALLOWED_FOR_WEB, f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize("path", [*SOURCES, ROOT / "webui.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_file_size_cap(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= 500, f"{path.relative_to(ROOT)} has {lines} lines (cap 500)"


def test_no_print_calls():
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_engine_importable_without_web_stack():
    import subprocess
    import sys

    code = (
        "import sys; import modules.engine.pipeline, modules.engine.loader;"
        "bad = [m for m in ('gradio', 'fastapi', 'uvicorn') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})


def test_loading_and_generating_import_no_model_library(tmp_path):
    """A load and a generated image use the own networks and tokenizer only: diffusers and transformers stay
    unimported (importing them cost ~9 s of the first image after a restart; README "Benchmarks", W6)."""
    import subprocess
    import sys

    from tests.support.tiny_checkpoints import write_checkpoint

    path = write_checkpoint("sdxl", tmp_path / "tiny.safetensors", write_yaml=False)
    code = (
        "import sys; from pathlib import Path;"
        "from modules.engine.loader import LoadOptions, load_checkpoint;"
        "from modules.engine.pipeline import generate;"
        "from modules.engine.types import CheckpointInfo, GenerationRequest;"
        f"m = load_checkpoint(CheckpointInfo(Path({str(path)!r}), 'tiny'), LoadOptions());"
        "r = generate(m, GenerationRequest(prompt='a cat', steps=2, width=64, height=64));"
        "assert r.images[0].size == (64, 64);"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('diffusers', 'transformers', 'accelerate', 'peft')];"
        "assert not bad, bad[:10]"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
