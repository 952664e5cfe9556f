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
    "engine": (WEB, ("modules.settings", "modules.jobs", "modules.context", "modules.ui", "modules.api")),
    "ui": (HEAVY, ("modules.api",)),
    "api": (HEAVY | {"gradio"}, ("modules.ui",)),
    "jobs": (HEAVY | WEB, ("modules.engine", "modules.context", "modules.ui", "modules.api")),
    "settings": (HEAVY | WEB, ("modules.engine", "modules.jobs", "modules.context", "modules.ui", "modules.api")),
    "errors": (HEAVY | WEB, ("modules.",)),
    "flags": (HEAVY | WEB, ("modules.engine", "modules.jobs", "modules.context", "modules.ui", "modules.api")),
    "context": (WEB, ("modules.ui", "modules.api")),
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
