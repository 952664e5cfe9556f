"""Tests of the launchers: webui.sh run for real in temporary copies, webui.bat / webui-user.bat checked statically."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_FILES = ("webui.sh", "requirements.txt", "modules/launch_check.py")
# Variables that would change what webui.sh does if the caller happens to have them set.
LAUNCHER_ENV = ("VIRTUAL_ENV", "COMMANDLINE_ARGS", "TORCH_COMMAND", "TORCH_INDEX_URL", "REQS_FILE", "INDEX_URL")
LAUNCHER_ENV += ("python_cmd", "venv_dir", "PIP_REQUIRE_VIRTUALENV")

# A test double for webui.py: it reports what the launcher handed it.
ARGV_PRINTER = textwrap.dedent(
    """
    import json, sys
    print("WEBUI_PY " + json.dumps({"argv": sys.argv[1:], "executable": sys.executable, "prefix": sys.prefix}))
    """
)


def make_copy(dest: Path, webui_py: str | None = None) -> Path:
    """Copy the launcher and what it reads into dest; optionally add a webui.py."""
    for name in LAUNCHER_FILES:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    if webui_py is not None:
        (dest / "webui.py").write_text(webui_py)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_ENV}
    env.update(extra)
    return env


def run_webui(copy: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run webui.sh in copy; return (exit status, stdout and stderr together)."""
    proc = subprocess.run(
        ["bash", str(copy / "webui.sh"), *args],
        cwd=copy,
        env=clean_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout


def webui_py_report(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("WEBUI_PY ")]
    assert len(lines) == 1, output
    return json.loads(lines[0].removeprefix("WEBUI_PY "))


def fake_command(bin_dir: Path, name: str, script: str) -> None:
    """Put an executable shell script named name into bin_dir (a test double for a system command)."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def current_python_env(**extra: str) -> dict[str, str]:
    """Environment that makes webui.sh use the interpreter running these tests, without a venv."""
    return clean_env(venv_dir="-", python_cmd=sys.executable, **extra)


# --- webui.sh, for real: a fresh venv shared by the tests of this module ---------------------------------------------


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run webui.sh --exit once into an empty venv: it must create it and install torch and the requirements."""
    base = tmp_path_factory.mktemp("launcher")
    copy = make_copy(base / "webui")
    venv = base / "venv"
    started = time.monotonic()
    # PIP_COMPILE=0 (pip's --no-compile) only skips writing .pyc files at install time: on 2 cores it cuts this
    # install from about 4.5 to 1.5 minutes. Python writes them on first import instead.
    rc, output = run_webui(copy, "-f", "--exit", env=clean_env(venv_dir=str(venv), PIP_COMPILE="0"), timeout=900)
    return {"copy": copy, "venv": venv, "rc": rc, "output": output, "seconds": time.monotonic() - started}


def site_packages_state(venv: Path) -> dict[str, float]:
    """Return name -> mtime for every entry of the venv's site-packages (changes when pip installs anything)."""
    (site_packages,) = venv.glob("lib/python3.*/site-packages")
    return {entry.name: entry.stat().st_mtime for entry in site_packages.iterdir()} | {
        ".": site_packages.stat().st_mtime
    }


@pytest.mark.slow
def test_first_start_creates_venv_and_installs_torch_and_requirements(fresh_install: dict) -> None:
    output = fresh_install["output"]
    assert fresh_install["rc"] == 0, output
    venv = fresh_install["venv"]
    assert f"Creating venv in {venv}" in output
    assert "Installing torch: pip install torch==2.14.1 torchvision==0.29.1" in output
    assert "Installing requirements from requirements.txt" in output
    assert output.rstrip().endswith("Exiting because of --exit")
    assert "Launching Web UI" not in output
    python = venv / "bin" / "python"
    check = REPO / "modules" / "launch_check.py"
    torch_check = subprocess.run([python, check, "torch"], capture_output=True, text=True, check=False)
    assert torch_check.returncode == 0, torch_check.stderr
    assert torch_check.stdout.startswith("torch 2.14.1"), torch_check.stdout
    reqs_check = subprocess.run(
        [python, check, "requirements", REPO / "requirements.txt"], capture_output=True, text=True, check=False
    )
    assert reqs_check.returncode == 0, reqs_check.stdout
    pip_check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    assert pip_check.returncode == 0, pip_check.stdout
    print(f"fresh venv: {fresh_install['seconds']:.0f} s")


@pytest.mark.slow
def test_second_start_installs_nothing_and_is_fast(fresh_install: dict) -> None:
    assert fresh_install["rc"] == 0, fresh_install["output"]
    venv = fresh_install["venv"]
    before = site_packages_state(venv)
    started = time.monotonic()
    rc, output = run_webui(fresh_install["copy"], "-f", "--exit", env=clean_env(venv_dir=str(venv)))
    seconds = time.monotonic() - started
    assert rc == 0, output
    assert "Installing" not in output
    assert "Creating venv" not in output
    assert f"Using venv {venv}" in output
    assert re.search(r"^torch 2\.14\.1\S* cuda_available=[01]$", output, re.MULTILINE), output
    assert "Requirements satisfied (requirements.txt)" in output
    assert site_packages_state(venv) == before
    assert seconds < 60, f"second start took {seconds:.1f} s:\n{output}"  # nothing installed; generous for busy CI


@pytest.mark.slow
def test_torch_command_override_and_reinstall_torch(fresh_install: dict) -> None:
    assert fresh_install["rc"] == 0, fresh_install["output"]
    env = clean_env(venv_dir=str(fresh_install["venv"]), TORCH_COMMAND="pip install torch==2.14.1 --no-deps")
    rc, output = run_webui(fresh_install["copy"], "-f", "--exit", "--reinstall-torch", env=env)
    assert rc == 0, output
    assert "Installing torch: pip install torch==2.14.1 --no-deps" in output
    assert "Requirement already satisfied: torch==2.14.1" in output


@pytest.mark.slow
def test_reqs_file_override(fresh_install: dict, tmp_path: Path) -> None:
    assert fresh_install["rc"] == 0, fresh_install["output"]
    satisfied = tmp_path / "satisfied.txt"
    satisfied.write_text("# installed by the first start\npillow==12.3.0\ngradio>=6\n")
    env = clean_env(venv_dir=str(fresh_install["venv"]), REQS_FILE=str(satisfied))
    rc, output = run_webui(fresh_install["copy"], "-f", "--exit", env=env)
    assert rc == 0, output
    assert f"Requirements satisfied ({satisfied})" in output
    assert "Installing" not in output

    missing = tmp_path / "missing.txt"
    missing.write_text("pillow==12.3.0\nthis-package-is-not-installed==1.0\n")
    env = clean_env(venv_dir=str(fresh_install["venv"]), REQS_FILE=str(missing))
    rc, output = run_webui(fresh_install["copy"], "-f", "--exit", "--skip-install", env=env)
    assert rc == 0, output
    assert "this-package-is-not-installed==1.0 (not installed)" in output
    assert "pillow" not in output.split("requirements not satisfied", 1)[1]
    assert "Installing" not in output

    env = clean_env(venv_dir=str(fresh_install["venv"]), REQS_FILE=str(tmp_path / "nope.txt"))
    rc, output = run_webui(fresh_install["copy"], "-f", "--exit", env=env)
    assert rc != 0
    assert "REQS_FILE=" in output and "does not exist" in output


# --- webui.sh, fast cases: the interpreter running the tests, no venv ------------------------------------------------


def test_refuses_root_without_f(tmp_path: Path) -> None:
    copy = make_copy(tmp_path / "webui")
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "id", 'if [ "$1" = "-u" ]; then echo 0; else exec /usr/bin/env id "$@"; fi')
    env = current_python_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    rc, output = run_webui(copy, "--exit", env=env)
    assert rc != 0
    assert "must not be launched as root" in output and "-f" in output
    assert "Exiting because of --exit" not in output

    rc, output = run_webui(copy, "-f", "--skip-prepare-environment", "--exit", env=env)
    assert rc == 0, output
    assert "Exiting because of --exit" in output


def test_venv_dash_uses_the_given_python_without_a_venv(tmp_path: Path) -> None:
    copy = make_copy(tmp_path / "webui", webui_py=ARGV_PRINTER)
    rc, output = run_webui(copy, "-f", "--skip-install", env=current_python_env())
    assert rc == 0, output
    assert "venv_dir is '-'" in output
    assert "Creating venv" not in output and "Installing" not in output
    assert re.search(r"^torch 2\.14\.1", output, re.MULTILINE), output
    report = webui_py_report(output)
    assert report["executable"] == sys.executable
    assert report["prefix"] == sys.prefix
    assert not (copy / "venv").exists()


def test_commandline_args_and_script_args_reach_webui_py(tmp_path: Path) -> None:
    copy = make_copy(tmp_path / "webui", webui_py=ARGV_PRINTER)
    env = current_python_env(COMMANDLINE_ARGS="--api --ckpt 'my model.safetensors' -f")
    rc, output = run_webui(copy, "-f", "--skip-prepare-environment", "--port", "7861", "two words", env=env)
    assert rc == 0, output
    expected = ["--api", "--ckpt", "my model.safetensors", "--skip-prepare-environment", "--port", "7861", "two words"]
    assert webui_py_report(output)["argv"] == expected
    assert "Launching Web UI with arguments: " + " ".join(expected) in output
    assert "Skipping the environment checks" in output
    assert "torch" not in output.split("Launching Web UI", 1)[0]


def test_webui_user_sh_is_sourced(tmp_path: Path) -> None:
    copy = make_copy(tmp_path / "webui", webui_py=ARGV_PRINTER)
    (copy / "webui-user.sh").write_text('#!/bin/bash\nexport COMMANDLINE_ARGS="--listen --theme dark"\nvenv_dir="-"\n')
    rc, output = run_webui(copy, "-f", "--skip-prepare-environment", env=clean_env(python_cmd=sys.executable))
    assert rc == 0, output
    assert webui_py_report(output)["argv"] == ["--listen", "--theme", "dark", "--skip-prepare-environment"]


def test_cuda_check_fails_clearly_only_with_an_nvidia_gpu(tmp_path: Path) -> None:
    # Without an NVIDIA driver the check never fails: test_venv_dash_uses_the_given_python_without_a_venv starts fine.
    copy = make_copy(tmp_path / "webui")
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "nvidia-smi", 'echo "GPU 0: NVIDIA Fake GPU (UUID: GPU-0)"')
    env = current_python_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    rc, output = run_webui(copy, "-f", "--skip-install", "--exit", env=env)
    if "cuda_available=1" in output:
        pytest.skip("this torch can use CUDA, so the failing case cannot be produced")
    assert rc != 0
    assert "Torch is not able to use the NVIDIA GPU" in output
    assert "--skip-torch-cuda-test" in output

    rc, output = run_webui(copy, "-f", "--skip-install", "--skip-torch-cuda-test", "--exit", env=env)
    assert rc == 0, output
    assert "Exiting because of --exit" in output


def test_missing_python_cmd_is_a_clear_error(tmp_path: Path) -> None:
    copy = make_copy(tmp_path / "webui")
    rc, output = run_webui(copy, "-f", "--exit", env=clean_env(python_cmd="python-that-does-not-exist"))
    assert rc != 0
    assert "python_cmd=python-that-does-not-exist was not found" in output


def test_too_old_python_is_refused(tmp_path: Path) -> None:
    copy = make_copy(tmp_path / "webui")
    bin_dir = tmp_path / "bin"
    # A test double for an old interpreter: runs the real one, but reports Python 3.9 to the version check.
    fake_command(
        bin_dir,
        "python3.9",
        f"""exec "{sys.executable}" -c 'import sys, runpy; sys.version_info = (3, 9, 18, "final", 0); \
sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")' "$@" """,
    )
    env = clean_env(python_cmd=str(bin_dir / "python3.9"), venv_dir="-")
    rc, output = run_webui(copy, "-f", "--exit", env=env)
    assert rc != 0
    assert "Python 3.9 is too old" in output


@pytest.mark.slow
def test_real_webui_py_starts_through_the_launcher() -> None:
    if not (REPO / "webui.py").exists():
        pytest.skip("webui.py does not exist yet")
    rc, output = run_webui(REPO, "-f", "--skip-prepare-environment", "--help", env=current_python_env())
    assert rc == 0, output
    assert "Launching Web UI with arguments: --skip-prepare-environment --help" in output
    assert "usage:" in output.lower()
    assert "--api" in output


# --- webui.bat and webui-user.bat, statically ------------------------------------------------------------------------


def bat_lines(name: str) -> list[str]:
    data = (REPO / name).read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n"), f"{name} must use CRLF line endings only"
    assert data.endswith(b"\r\n")
    return data.decode("ascii").split("\r\n")


def bat_code(name: str) -> list[str]:
    """Return the lines that cmd.exe executes (comments and blank lines removed)."""
    return [line.strip() for line in bat_lines(name) if line.strip() and not re.match(r"(?i)\s*(rem\b|::)", line)]


def test_bat_files_use_crlf() -> None:
    for name in ("webui.bat", "webui-user.bat"):
        bat_lines(name)


def test_webui_user_bat_sets_the_a1111_variables_and_calls_webui_bat() -> None:
    code = bat_code("webui-user.bat")
    for variable in ("PYTHON", "GIT", "VENV_DIR", "COMMANDLINE_ARGS"):
        assert f"set {variable}=" in code
    assert code[-1].lower().startswith("call webui.bat")


def test_webui_bat_labels_and_gotos_match() -> None:
    code = bat_code("webui.bat")
    labels = {line[1:].lower() for line in code if line.startswith(":")}
    targets = re.findall(r"(?i)(?:goto|call) :(\w+)", "\n".join(code))
    assert targets
    for target in targets:
        assert target.lower() in labels, f"goto/call :{target} has no label"


def test_webui_bat_steps_in_order() -> None:
    code = bat_code("webui.bat")
    text = "\n".join(code)

    def first(pattern: str) -> int:
        for number, line in enumerate(code):
            if re.search(pattern, line):
                return number
        pytest.fail(f"webui.bat has no line matching {pattern!r}")

    assert "if not defined PYTHON (set PYTHON=python)" in code
    assert 'if not defined VENV_DIR (set "VENV_DIR=%~dp0venv")' in code
    assert re.search(
        r"TORCH_COMMAND=pip install torch==2\.14\.1 torchvision==0\.29\.1 "
        r"--extra-index-url https://download\.pytorch\.org/whl/cu128",
        text,
    )
    steps = [
        first(r"^%PYTHON% -c \"\""),  # python runs
        first(r"^call :check_python$"),  # version 3.11 to 3.13
        first(r'\["%VENV_DIR%"\] == \["-"\]'),  # VENV_DIR=- skips the venv
        first(r'SKIP_VENV%"\] == \["1"\]'),
        first(r'if exist "%VENV_DIR%\\Scripts\\Python.exe"'),
        first(r'%PYTHON% -m venv "%VENV_DIR%"'),
        first(r'call "%VENV_DIR%\\Scripts\\activate.bat"'),
        first(r'%LAUNCH_CHECK%" torch'),  # import torch
        first(r"%PYTHON% -m %TORCH_COMMAND%"),
        first(r'%LAUNCH_CHECK%" requirements "%REQS_FILE%"'),
        first(r'%PYTHON% -m pip install --prefer-binary -r "%REQS_FILE%"'),
        first(r"^%PYTHON% webui\.py %COMMANDLINE_ARGS% %\*$"),
        first(r"Launch unsuccessful"),
    ]
    assert steps == sorted(steps), steps
    assert 'set "LAUNCH_CHECK=%~dp0modules\\launch_check.py"' in code
    check_python = code[first(r"^:check_python$") :]
    assert check_python[1] == '%PYTHON% "%LAUNCH_CHECK%" python'
    assert "if %ERRORLEVEL% equ 3 if defined SKIP_PYTHON_CHECK exit /b 0" in check_python
    pause = first(r"^pause$")
    assert pause > first(r"Launch unsuccessful")
    assert re.search(r'(?m)^if "%%~a"=="--exit" set EXIT_AFTER=1$', text)
    assert re.search(r'(?m)^if "%%~a"=="--skip-torch-cuda-test" set SKIP_CUDA_TEST=1$', text)
    assert re.search(r"(?m)^for %%a in \(%COMMANDLINE_ARGS% %\*\) do \($", text)
