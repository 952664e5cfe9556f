#!/usr/bin/env bash
# The one command that sets up a fresh clone and runs the whole test suite:
#
#     bash tests/run.sh [pytest arguments...]
#
# 1. Creates the test venv .venv-test at the repository root (TEST_VENV overrides it) with the first supported Python
#    (PYTHON overrides it), 2. installs torch + torchvision (TORCH_COMMAND, default "pip install torch==2.14.1
#    torchvision==0.29.1"), requirements.txt, tests/requirements-nodeps.txt (with --no-deps)
#    and tests/requirements-test.txt, each only when not yet satisfied, 3. installs Debian's chromium for the browser
#    tests when it is missing and apt-get can (best effort; SKIP_CHROMIUM_INSTALL=1 skips this; the browser tests skip
#    themselves without it), 4. runs pytest offline. Exits non-zero when pytest fails or collects no tests.
set -uo pipefail

root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd -- "${root}" || exit 1
launch_check="${root}/modules/launch_check.py"
venv="${TEST_VENV:-${root}/.venv-test}"
# torch with a torchvision that imports beside it (spandrel needs torchvision). On x86_64 Linux the pair below is
# the newest that PyPI's torchvision matches; PyPI's torchvision fails to import beside a "+cpu" torch build.
case "$(uname -m)" in
    aarch64 | arm64) default_torch="pip install torch==2.9.1 torchvision==0.24.1" ;;
    *) default_torch="pip install torch==2.14.1 torchvision==0.29.1" ;;
esac
torch_command="${TORCH_COMMAND:-${default_torch}}"

step() { printf '[tests/run.sh] %s\n' "$*"; }
die() {
    printf '[tests/run.sh] ERROR: %s\n' "$*" >&2
    exit 1
}

# 1. The test venv.
if [[ ! -x "${venv}/bin/python" ]]; then
    python="${PYTHON:-}"
    if [[ -z "${python}" ]]; then
        for candidate in python3.12 python3.11 python3.10 python3.13 python3; do
            if command -v "${candidate}" >/dev/null 2>&1 && "${candidate}" "${launch_check}" python >/dev/null 2>&1; then
                python="${candidate}"
                break
            fi
        done
    fi
    [[ -n "${python}" ]] || die "no supported Python (3.11 to 3.13) found; set PYTHON."
    "${python}" "${launch_check}" python || die "${python} is not a supported Python."
    step "creating ${venv} with ${python}"
    "${python}" -m venv "${venv}" || die "could not create ${venv}"
fi
# shellcheck source=/dev/null
source "${venv}/bin/activate" || die "could not activate ${venv}"
python="${venv}/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# No .pyc files at install time (pip --no-compile): several times faster on small machines; Python writes them on import.
export PIP_COMPILE="${PIP_COMPILE:-0}"

# 2. Packages, installed only when missing.
if ! "${python}" "${launch_check}" torch >/dev/null 2>&1; then
    step "installing torch: ${torch_command}"
    # shellcheck disable=SC2086  # a command line: word splitting is intended
    "${python}" -m ${torch_command} || die "installing torch failed (TORCH_COMMAND=${torch_command})"
fi
reqs=(requirements.txt tests/requirements-test.txt)
if ! "${python}" "${launch_check}" requirements "${reqs[@]}"; then
    step "installing ${reqs[*]}"
    "${python}" -m pip install --prefer-binary -r requirements.txt -r tests/requirements-test.txt \
        || die "installing the requirements failed"
fi
# Reference implementations the tests compare against, without their heavy training dependencies.
if ! "${python}" "${launch_check}" requirements tests/requirements-nodeps.txt >/dev/null 2>&1; then
    step "installing tests/requirements-nodeps.txt (--no-deps)"
    "${python}" -m pip install --no-deps -r tests/requirements-nodeps.txt || die "installing the no-deps test packages failed"
fi
step "$("${python}" "${launch_check}" torch 2>&1)"

# 3. A browser for the UI tests (Debian's chromium; playwright's own browser download is never used).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [[ "${SKIP_CHROMIUM_INSTALL:-0}" != 1 ]] && command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]]; then
        step "installing chromium with apt-get (best effort)"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; then
            apt-get update -q >/dev/null 2>&1
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
                || step "could not install chromium: the browser tests will be skipped"
        fi
    else
        step "no chromium found: the browser tests will be skipped"
    fi
fi

# 4. The tests, offline.
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
step "running: python -m pytest $*"
"${python}" -m pytest "$@"
rc=$?
if [[ ${rc} -eq 5 ]]; then
    die "pytest collected no tests (exit code 5): check the arguments and tests/."
fi
exit "${rc}"
