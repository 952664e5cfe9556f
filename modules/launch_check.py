"""Check the launcher's preconditions quickly (Python version, torch import, requirements) with the stdlib only.

Used by ``webui.sh``, ``webui.bat`` and ``tests/run.sh`` so that a start whose environment is already complete runs no
``pip`` at all. It must stay importable without any third-party package: the launcher runs it before anything is
installed, possibly with a Python that is not the venv's.

Command line (exit status 0 = satisfied, 1 = not, 2 = usage error, 3 = Python newer than tested)::

    python modules/launch_check.py python        # is this interpreter a supported version?
    python modules/launch_check.py torch         # does `import torch` work? prints version and CUDA availability
    python modules/launch_check.py requirements requirements.txt [more.txt ...]
    python modules/launch_check.py split-args    # $COMMANDLINE_ARGS -> NUL-separated words (shlex rules)
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

MIN_PYTHON = (3, 11)  # numpy 2.4 and pandas 3 declare Requires-Python >= 3.11
MAX_PYTHON = (3, 13)  # the newest version the pinned requirements are tested with

_VERSION_RE = re.compile(
    r"^v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d*))?"
    r"(?:[-_.]?(?:post|rev|r)[-_.]?(?P<post>\d*)|-(?P<post_implicit>\d+))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev>\d*))?"
    r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?$",
    re.IGNORECASE,
)
_REQ_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*?)\s*(?:;(?P<marker>.*))?$"
)
_SPEC_RE = re.compile(r"^(?P<op>~=|===|==|!=|<=|>=|<|>)\s*(?P<version>\S+)$")
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}

VersionKey = tuple[int, tuple[int, ...], tuple[int, int], int, int]


def normalize_name(name: str) -> str:
    """Return the PEP 503 normalized form of a distribution name.

    >>> normalize_name("Gradio_Client")
    'gradio-client'
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> VersionKey | None:
    """Return a sort key for a PEP 440 version (local label ignored), or None if it cannot be parsed.

    >>> version_key("2.13.0+cpu") == version_key("2.13")
    True
    >>> version_key("1.0rc1") < version_key("1.0") < version_key("1.0.post1")
    True
    >>> version_key("1.0.dev1") < version_key("1.0a1")
    True
    >>> version_key("not a version") is None
    True
    """
    match = _VERSION_RE.match(version.strip())
    if match is None:
        return None
    release = tuple(int(part) for part in match["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    pre_label = match["pre_l"]
    if pre_label is not None:
        pre = (_PRE_RANK[pre_label.lower()], int(match["pre_n"] or 0))
    elif match["dev"] is not None and match["post"] is None and match["post_implicit"] is None:
        pre = (-1, 0)  # 1.0.dev0 sorts before 1.0a0
    else:
        pre = (3, 0)  # a final release sorts after its pre-releases
    post_text = match["post"] if match["post"] is not None else match["post_implicit"]
    post = -1 if post_text is None else int(post_text or 0)
    dev = sys.maxsize if match["dev"] is None else int(match["dev"] or 0)
    return (int(match["epoch"] or 0), release, pre, post, dev)


def _release_prefix_matches(installed: str, wanted: str) -> bool:
    """Return True if ``installed`` matches the ``==X.*`` prefix ``wanted`` (without the ``.*``)."""
    have, want = version_key(installed), version_key(wanted)
    if have is None or want is None:
        return False
    wanted_release = tuple(int(p) for p in wanted.split("+")[0].split("."))
    padded = have[1] + (0,) * len(wanted_release)
    return have[0] == want[0] and padded[: len(wanted_release)] == wanted_release


def specifier_matches(installed: str, op: str, wanted: str) -> bool:
    """Return True if the installed version satisfies one ``op wanted`` clause (PEP 440, simplified).

    >>> specifier_matches("2.13.0+cpu", "==", "2.13.0")
    True
    >>> specifier_matches("2.13.0+cpu", "==", "2.13.0+cu128")
    False
    >>> specifier_matches("0.42.1", ">=", "0.42")
    True
    >>> specifier_matches("2.4.6", "~=", "2.4")
    True
    >>> specifier_matches("3.0", "~=", "2.4")
    False
    >>> specifier_matches("1.4.2", "==", "1.4.*")
    True
    """
    if op == "===":
        return installed == wanted
    if wanted.endswith(".*") and op in ("==", "!="):
        return _release_prefix_matches(installed, wanted[:-2]) == (op == "==")
    have, want = version_key(installed), version_key(wanted)
    if have is None or want is None:
        return False
    if op in ("==", "!="):
        same = have == want and ("+" not in wanted or installed.split("+", 1)[-1] == wanted.split("+", 1)[-1])
        return same if op == "==" else not same
    if op == "~=":
        parts = wanted.split("+")[0].split(".")
        return have >= want and _release_prefix_matches(installed, ".".join(parts[:-1]))
    return {">=": have >= want, "<=": have <= want, ">": have > want, "<": have < want}[op]


def _marker_applies(marker: str) -> bool:
    """Evaluate an environment marker with pip's vendored ``packaging`` (always present next to pip)."""
    try:
        from pip._vendor.packaging.markers import Marker
    except ImportError:
        return True  # cannot tell: check the requirement (a false "unsatisfied" only costs one pip run)
    return bool(Marker(marker).evaluate())


def requirement_problem(line: str, installed: Mapping[str, str]) -> str | None:
    """Return why one requirements line is not satisfied, or None if it is (or is not a requirement at all).

    Args:
        line: One line of a requirements file, comments already removed.
        installed: Normalized distribution name -> installed version.

    >>> requirement_problem("torch>=2.4", {"torch": "2.13.0+cpu"}) is None
    True
    >>> requirement_problem("Pillow==12.3.0", {"pillow": "12.2.0"})
    'pillow==12.3.0 (installed: 12.2.0)'
    >>> requirement_problem("gradio==6.31.0", {})
    'gradio==6.31.0 (not installed)'
    """
    line = line.strip()
    if not line or line.startswith("-"):
        return None  # options such as --extra-index-url; -r is handled by the caller
    match = _REQ_RE.match(line)
    if match is None:
        return f"{line} (cannot parse this line)"
    if match["marker"] and not _marker_applies(match["marker"]):
        return None
    name = normalize_name(match["name"])
    spec = match["spec"].replace(" ", "")
    version = installed.get(name)
    if version is None:
        return f"{name}{spec} (not installed)"
    for clause in filter(None, spec.split(",")):
        clause_match = _SPEC_RE.match(clause)
        if clause_match is None or not specifier_matches(version, clause_match["op"], clause_match["version"]):
            return f"{name}{spec} (installed: {version})"
    return None


def installed_versions() -> dict[str, str]:
    """Return normalized name -> version for every distribution visible to this interpreter."""
    versions: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(normalize_name(name), dist.version)
    return versions


def _requirement_lines(path: Path, seen: set[Path]) -> Iterable[str]:
    """Yield the requirement lines of a file, following ``-r other.txt`` includes."""
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if line.startswith("#"):
            continue
        include = re.match(r"^(?:-r|--requirement)(?:\s+|=)(\S+)$", line)
        if include:
            yield from _requirement_lines(path.parent / include[1], seen)
        else:
            yield line


def unsatisfied_requirements(paths: Iterable[Path], installed: Mapping[str, str] | None = None) -> list[str]:
    """Return a description of each unsatisfied requirement in the given requirements files."""
    versions = installed_versions() if installed is None else installed
    seen: set[Path] = set()
    problems = []
    for path in paths:
        for line in _requirement_lines(path, seen):
            problem = requirement_problem(line, versions)
            if problem is not None:
                problems.append(problem)
    return problems


def python_problem(version: tuple[int, int]) -> str | None:
    """Return why this Python version is not supported, or None if it is.

    >>> python_problem((3, 11)) is None
    True
    >>> python_problem((3, 9))
    'Python 3.9 is too old: 3.11 to 3.13 is supported'
    """
    low, high = ".".join(map(str, MIN_PYTHON)), ".".join(map(str, MAX_PYTHON))
    shown = ".".join(map(str, version))
    if version < MIN_PYTHON:
        return f"Python {shown} is too old: {low} to {high} is supported"
    if version > MAX_PYTHON:
        return f"Python {shown} is newer than the supported {low} to {high}"
    return None


def _check_torch() -> int:
    """Import torch; print its version, CUDA availability and whether an NVIDIA driver is visible."""
    try:
        import torch
        import torchvision  # noqa: F401  (the upscalers' spandrel needs it; it must match torch's build)
    except Exception as exc:  # any failure to import means "install torch and torchvision"
        sys.stderr.write(f"import torch/torchvision failed: {type(exc).__name__}: {exc}\n")
        return 1
    sys.stdout.write(f"torch {torch.__version__} cuda_available={int(torch.cuda.is_available())}\n")
    return 0


def main(argv: list[str]) -> int:
    """Run one check named by argv[0]; see the module docstring."""
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "python":
        version = sys.version_info[:2]
        problem = python_problem(version)
        sys.stdout.write(f"{sys.version.split()[0]} ({sys.executable})\n" + (f"{problem}\n" if problem else ""))
        return 0 if problem is None else 3 if version > MAX_PYTHON else 1
    if command == "torch":
        return _check_torch()
    if command == "requirements" and args:
        missing = [arg for arg in args if not Path(arg).is_file()]
        if missing:
            sys.stderr.write(f"requirements file not found: {', '.join(missing)}\n")
            return 2
        problems = unsatisfied_requirements(Path(arg) for arg in args)
        for problem in problems:
            sys.stdout.write(f"  unsatisfied: {problem}\n")
        return 1 if problems else 0
    if command == "split-args":
        sys.stdout.write("".join(word + "\0" for word in shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))))
        return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
