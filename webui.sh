#!/usr/bin/env bash
#################################################
# Start the web UI on Linux and macOS (AUTOMATIC1111-compatible launcher).
#
# Settings come from the environment or from webui-user.sh beside this file:
#   python_cmd         Python to create the venv with (default: the first of python3.12, python3.11, python3.10,
#                      python3.13, python3 that runs and is supported; 3.11 to 3.13 are supported)
#   venv_dir           venv folder, relative to this folder or absolute (default: venv); "-" = use no venv
#   COMMANDLINE_ARGS   arguments for webui.py, before the ones given to this script (shell quoting rules)
#   TORCH_COMMAND      how to install torch, run as "python -m $TORCH_COMMAND" (default: depends on the machine)
#   TORCH_INDEX_URL    the PyTorch wheel index used by the default TORCH_COMMAND on NVIDIA and AMD machines
#   REQS_FILE          requirements file (default: requirements.txt)
#   INDEX_URL          passed to pip as --index-url when installing the requirements
# Launcher flags (also accepted in COMMANDLINE_ARGS): -f (allow root), --skip-prepare-environment, --skip-install,
# --skip-torch-cuda-test, --skip-python-version-check, --reinstall-torch, --exit.
# Bash 3.2 compatible (macOS ships it).
#################################################

TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
cd -- "${script_dir}" || exit 1
launch_check="${script_dir}/modules/launch_check.py"

info() { printf '%s\n' "$*"; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# 1. User settings.
if [[ -f "${script_dir}/webui-user.sh" ]]; then
    # shellcheck source=/dev/null
    source "${script_dir}/webui-user.sh"
fi

export ERROR_REPORTING=FALSE
export PIP_IGNORE_INSTALLED=0
export GRADIO_ANALYTICS_ENABLED="${GRADIO_ANALYTICS_ENABLED:-False}"
if [[ "$(uname -s)" == "Darwin" ]]; then
    export PYTORCH_ENABLE_MPS_FALLBACK="${PYTORCH_ENABLE_MPS_FALLBACK:-1}"
fi

[[ "$(getconf LONG_BIT 2>/dev/null)" == "32" ]] && die "32-bit systems are not supported."

# 2. Pick the Python that creates the venv (or runs everything, with venv_dir=-).
python_status() { "$1" "${launch_check}" python >/dev/null 2>&1; }

if [[ -n "${python_cmd:-}" ]]; then
    command -v "${python_cmd}" >/dev/null 2>&1 || die "python_cmd=${python_cmd} was not found."
else
    for candidate in python3.12 python3.11 python3.10 python3.13 python3; do
        if command -v "${candidate}" >/dev/null 2>&1 && python_status "${candidate}"; then
            python_cmd="${candidate}"
            break
        fi
    done
    [[ -n "${python_cmd:-}" ]] || die "No supported Python found (tried python3.12, python3.11, python3.10, \
python3.13, python3). Install Python 3.11, 3.12 or 3.13, or set python_cmd in webui-user.sh."
fi

# 3. Arguments: COMMANDLINE_ARGS (split with shell quoting rules by Python's shlex), then this script's arguments.
args=()
while IFS= read -r -d '' word; do
    args+=("${word}")
done < <(COMMANDLINE_ARGS="${COMMANDLINE_ARGS:-}" "${python_cmd}" "${launch_check}" split-args)
args+=("$@")

allow_root=0 skip_prepare=0 skip_install=0 skip_cuda_test=0 skip_python_check=0 reinstall_torch=0 exit_after=0
webui_args=()
for arg in ${args[@]+"${args[@]}"}; do
    case "${arg}" in
        -f) allow_root=1; continue ;;
        --skip-prepare-environment) skip_prepare=1 ;;
        --skip-install) skip_install=1 ;;
        --skip-torch-cuda-test) skip_cuda_test=1 ;;
        --skip-python-version-check) skip_python_check=1 ;;
        --reinstall-torch) reinstall_torch=1 ;;
        --exit) exit_after=1 ;;
    esac
    webui_args+=("${arg}")
done

if [[ "$(id -u)" -eq 0 && "${allow_root}" -eq 0 ]]; then
    die "This script must not be launched as root, aborting. Add -f to run it as root anyway."
fi

check_python() {  # $1 = interpreter; dies unless it is a supported version (or only too new and the check is skipped)
    local output rc
    output="$("$1" "${launch_check}" python 2>&1)"
    rc=$?
    if [[ ${rc} -eq 3 && "${skip_python_check}" -eq 1 ]]; then
        info "WARNING: ${output##*$'\n'} (continuing: --skip-python-version-check)"
    elif [[ ${rc} -ne 0 ]]; then
        die "${output##*$'\n'}. Set python_cmd in webui-user.sh (or add --skip-python-version-check if it is newer)."
    fi
    info "Python ${output%%$'\n'*}"
}
check_python "${python_cmd}"

# 4. The venv: create it if missing and activate it, unless one is already active or venv_dir is "-".
venv_dir="${venv_dir:-venv}"
python="${python_cmd}"
if [[ "${venv_dir}" == "-" ]]; then
    info "venv_dir is '-': using ${python_cmd} without a venv"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    info "Using the already active venv ${VIRTUAL_ENV}"
    [[ -x "${VIRTUAL_ENV}/bin/python" ]] && python="${VIRTUAL_ENV}/bin/python"
else
    [[ "${venv_dir}" == /* ]] || venv_dir="${script_dir}/${venv_dir}"
    if [[ ! -x "${venv_dir}/bin/python" ]]; then
        "${python_cmd}" -c "import venv, ensurepip" >/dev/null 2>&1 \
            || die "${python_cmd} cannot create a venv (on Debian/Ubuntu: apt install python3-venv)."
        info "Creating venv in ${venv_dir}"
        "${python_cmd}" -m venv "${venv_dir}" || die "Could not create the venv in ${venv_dir}."
    fi
    # shellcheck source=/dev/null
    source "${venv_dir}/bin/activate" || die "Could not activate the venv in ${venv_dir}."
    python="${venv_dir}/bin/python"
    info "Using venv ${venv_dir}"
    check_python "${python}"
fi

# 5. Prepare the environment: torch, the CUDA check, the requirements. Nothing is installed when all is satisfied.
if [[ -z "${TORCH_COMMAND:-}" ]]; then
    if [[ "$(uname -s)" == "Darwin" ]]; then
        TORCH_COMMAND="pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        TORCH_COMMAND="pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION} --extra-index-url \
${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
    elif command -v rocminfo >/dev/null 2>&1; then
        TORCH_COMMAND="pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION} --extra-index-url \
${TORCH_INDEX_URL:-https://download.pytorch.org/whl/rocm7.1}"
    else
        TORCH_COMMAND="pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}"
    fi
fi
REQS_FILE="${REQS_FILE:-requirements.txt}"

if [[ "${skip_prepare}" -eq 1 ]]; then
    info "Skipping the environment checks (--skip-prepare-environment)"
else
    torch_status="$("${python}" "${launch_check}" torch 2>&1)"
    torch_ok=$?
    if [[ ${torch_ok} -ne 0 || "${reinstall_torch}" -eq 1 ]]; then
        if [[ "${skip_install}" -eq 1 ]]; then
            info "WARNING: torch is not importable, and --skip-install forbids installing it: ${torch_status}"
        else
            info "Installing torch: ${TORCH_COMMAND}"
            # shellcheck disable=SC2086  # TORCH_COMMAND is a command line: word splitting is intended
            "${python}" -m ${TORCH_COMMAND} || die "Installing torch failed. Check TORCH_COMMAND (${TORCH_COMMAND})."
            torch_status="$("${python}" "${launch_check}" torch 2>&1)" \
                || die "torch was installed but cannot be imported: ${torch_status}"
        fi
    fi
    info "${torch_status}"

    if [[ "${skip_cuda_test}" -eq 0 && "${torch_status}" == *"cuda_available=0"* ]] \
        && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        die "Torch is not able to use the NVIDIA GPU. Add --skip-torch-cuda-test to COMMANDLINE_ARGS to run \
without it, or set TORCH_COMMAND to a CUDA build of torch and start with --reinstall-torch."
    fi

    [[ -f "${REQS_FILE}" ]] || die "REQS_FILE=${REQS_FILE} does not exist."
    if missing="$("${python}" "${launch_check}" requirements "${REQS_FILE}" 2>&1)"; then
        info "Requirements satisfied (${REQS_FILE})"
    elif [[ "${skip_install}" -eq 1 ]]; then
        info "WARNING: requirements not satisfied, not installing them (--skip-install):"
        info "${missing}"
    else
        info "Installing requirements from ${REQS_FILE}"
        pip_index=()
        [[ -n "${INDEX_URL:-}" ]] && pip_index=(--index-url "${INDEX_URL}")
        "${python}" -m pip install --prefer-binary ${pip_index[@]+"${pip_index[@]}"} -r "${REQS_FILE}" \
            || die "Installing the requirements from ${REQS_FILE} failed."
        if ! missing="$("${python}" "${launch_check}" requirements "${REQS_FILE}" 2>&1)"; then
            info "WARNING: still not satisfied after installing ${REQS_FILE}:"
            info "${missing}"
        fi
    fi
fi

if [[ "${exit_after}" -eq 1 ]]; then
    info "Exiting because of --exit"
    exit 0
fi

# 6. Start the app.
info "Launching Web UI with arguments: ${webui_args[*]+"${webui_args[*]}"}"
exec "${python}" -u "${script_dir}/webui.py" ${webui_args[@]+"${webui_args[@]}"}
