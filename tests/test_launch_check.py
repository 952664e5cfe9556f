"""Tests of modules/launch_check.py: the stdlib-only checks that let a complete environment start without pip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modules import launch_check

SCRIPT = Path(launch_check.__file__)


@pytest.mark.parametrize(
    ("installed", "op", "wanted", "expected"),
    [
        ("2.13.0+cpu", "==", "2.13.0", True),
        ("2.13.0+cpu", "==", "2.13", True),
        ("2.13.0", "==", "2.13.0+cu128", False),
        ("2.13.1", "==", "2.13.0", False),
        ("2.13.1", "!=", "2.13.0", True),
        ("1.0rc1", ">=", "1.0", False),
        ("1.0.post1", ">", "1.0", True),
        ("0.9.17", "<", "0.10", True),
        ("2.4.6", "~=", "2.4.0", True),
        ("2.5.0", "~=", "2.4.0", False),
        ("6.31.0", "==", "6.*", True),
        ("7.0", "==", "6.*", False),
        ("2026.11.15", ">=", "2026.1", True),
        ("garbage", ">=", "1.0", False),
    ],
)
def test_specifier_matches(installed: str, op: str, wanted: str, expected: bool) -> None:
    assert launch_check.specifier_matches(installed, op, wanted) is expected


def test_requirement_lines_options_extras_markers_and_combined_specifiers() -> None:
    installed = {"pillow": "12.3.0", "uvicorn": "0.54.0", "gradio-client": "2.7.2"}
    problem = launch_check.requirement_problem
    assert problem("--extra-index-url https://example.invalid/simple", installed) is None
    assert problem("uvicorn[standard]==0.54.0", installed) is None
    assert problem("Gradio_Client >= 2.7, < 3", installed) is None
    assert problem("pillow>=12,<12.3", installed) == "pillow>=12,<12.3 (installed: 12.3.0)"
    assert problem('pywin32==311; sys_platform == "nonexistent-os"', installed) is None
    assert problem('pywin32==311; python_version >= "3"', installed) == "pywin32==311 (not installed)"
    assert problem("???", installed) == "??? (cannot parse this line)"


def test_unsatisfied_requirements_follows_includes_and_ignores_comments(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("# base\npillow==12.3.0  # pinned\nnumpy==1.0\n")
    (tmp_path / "main.txt").write_text("-r base.txt\n\n--requirement=base.txt\nmissing-pkg\n")
    installed = {"pillow": "12.3.0", "numpy": "2.4.6"}
    problems = launch_check.unsatisfied_requirements([tmp_path / "main.txt"], installed)
    assert problems == ["numpy==1.0 (installed: 2.4.6)", "missing-pkg (not installed)"]


def test_installed_versions_sees_this_environment() -> None:
    versions = launch_check.installed_versions()
    assert versions["pytest"] == pytest.__version__


def test_python_problem_range() -> None:
    assert launch_check.python_problem(launch_check.MIN_PYTHON) is None
    assert launch_check.python_problem(launch_check.MAX_PYTHON) is None
    assert "too old" in launch_check.python_problem((3, 10))
    assert "newer" in launch_check.python_problem((3, 14))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, check=False)


def test_command_line(tmp_path: Path) -> None:
    reqs = tmp_path / "r.txt"
    reqs.write_text(f"pytest=={pytest.__version__}\n")
    assert run("requirements", str(reqs)).returncode == 0
    reqs.write_text("pytest==0.0.1\n")
    result = run("requirements", str(reqs))
    assert result.returncode == 1
    assert f"unsatisfied: pytest==0.0.1 (installed: {pytest.__version__})" in result.stdout
    assert run("requirements", str(tmp_path / "nope.txt")).returncode == 2
    assert run("no-such-command").returncode == 2

    version = run("python")
    assert version.returncode == 0
    assert version.stdout.startswith(f"{sys.version.split()[0]} ({sys.executable})")

    words = run("split-args", env={"COMMANDLINE_ARGS": '--api --ckpt \'a b.safetensors\' "x\\"y"'})
    assert words.stdout.split("\0") == ["--api", "--ckpt", "a b.safetensors", 'x"y', ""]
