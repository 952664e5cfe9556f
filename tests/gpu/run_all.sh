#!/usr/bin/env bash
# One GPU-machine session of measurements (the device's 10-minute command limit: run the parts as separate calls).
#
#     bash tests/gpu/run_all.sh OUT_DIR [bench|compile|compile-sdxl|profile|vae|kernels|startup|w6|app|lora|previews|tests|all|none]
#
# Writes full-size sd1/sdxl checkpoints to /tmp/ck once (≈70 s), then:
#   bench    python -m tests.gpu.bench (W1–W6 with B, cold load, W4, resolution change)      ≈ 4 min
#   compile  the --compile path and B + reduce-overhead (SD1.5: W1, W4, W2 batch 8)            ≈ 6 min
#   compile-sdxl  the same for SDXL (W1, W4)                                                  ≈ 8 min
#   profile  unet_profile (batch 1 and 8, with --variants), gn_probe, phase_probe (W2), load_profile  ≈ 4 min
#   vae      vae_probe (decode/encode per VAE layout, and torch.compile of the decoder)             ≈ 3 min
#   kernels  kernel_cache_probe: W6 with an empty Triton cache (a new install), then again (a restart)         ≈ 40 s
#   startup  startup_profile three times, then once with --warm-up                            ≈ 1 min
#   w6       W6 (a new process to its first image) four times                                  ≈ 30 s
#   app      app_start: the whole app (webui.py --api): a first start, two restarts; page and first jobs    ≈ 1 min
#   lora     lora_probe: merge, restore and switch times of a rank-32 LoRA, the job with it (SD1.5, SDXL);
#            pin_probe: pinned host memory with PyTorch's defaults and with the app's allocator settings        ≈ 3 min
#   previews preview_probe: a watched job's time with Approx cheap and Full previews (SD1.5, SDXL)         ≈ 2 min
#   tests    the pytest tests marked gpu (``-m gpu``: .pytest.ini leaves them out everywhere else)             ≈ 2 min
# Wheels the machine lacks are installed from .whl/ (diffusers, transformers, omegaconf…: the benchmark's baseline)
# and .whl-app/ (gradio, fastapi, pydantic… that the machine lacks: the app) when those folders exist. Carry .whl for
# the first four parts and .whl-app for `app`. Both are git-ignored; fill them here (Python 3.12 wheels) with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl NAME==VERSION…
# .whl: diffusers transformers accelerate omegaconf psutil torchsde trampoline (versions of tests/requirements-test.txt
# and requirements.txt); .whl-app: gradio gradio_client fastapi starlette uvicorn pydantic pydantic_core
# annotated_types typing_inspection anyio h11 httpx httpcore httpx2 httpcore2 orjson brotli groovy hf_gradio safehttpx
# semantic_version tomlkit pydub python_multipart pytz truststore opentelemetry_api importlib_metadata omegaconf
# torchsde trampoline (requirements.txt's versions; the rest is on the machine, KINDS.md).
set -uo pipefail
out="${1:?usage: run_all.sh OUT_DIR [bench|compile|compile-sdxl|profile|vae|kernels|startup|w6|app|lora|previews|tests|all|none]}"
what="${2:-all}"
mkdir -p "${out}" /tmp/ck
for wheels in .whl .whl-app; do
    if [[ -d "${wheels}" ]]; then
        python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site "${wheels}"/*.whl
    fi
done
export PYTHONPATH="/tmp/site:${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# Bytecode is cached as on a user's machine (pip compiles it at install, Python writes it on first import): without
# this the lent machine compiled ~1000 modules in every process (2.3-3.0 s of each start-up, startup_profile_no_bytecode_cache-h200.txt).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-/tmp/pycache}"
[[ -f /tmp/ck/sdxl.safetensors ]] || python3 -c "
from pathlib import Path
from tests.support.tiny_checkpoints import write_checkpoint
for kind in ('sd1', 'sdxl'):
    write_checkpoint(kind, Path('/tmp/ck') / f'{kind}.safetensors', size='full', write_yaml=False)"
run() { [[ "${what}" == all || "${what}" == "$1" ]]; }
if run bench; then
    python3 -m tests.gpu.bench --checkpoint-dir /tmp/ck --out "${out}/bench.json" > "${out}/bench.log" 2>&1
fi
if run compile; then
    python3 -m tests.gpu.bench --checkpoint-dir /tmp/ck --skip-sdxl --compile --runs 6 \
        --out "${out}/bench-sd1-compile.json" > "${out}/bench-compile.log" 2>&1
fi
if run compile-sdxl; then
    python3 -m tests.gpu.bench --checkpoint-dir /tmp/ck --skip-sd1 --compile --runs 6 \
        --out "${out}/bench-sdxl-compile.json" > "${out}/bench-compile-sdxl.log" 2>&1
fi
if run profile; then
    python3 -m tests.gpu.unet_profile /tmp/ck/sd1.safetensors /tmp/ck/sdxl.safetensors --batch 1 8 --variants \
        --out "${out}/unet_profile.json" > "${out}/profile.log" 2>&1
    python3 -m tests.gpu.gn_probe --out "${out}/gn_probe.json" >> "${out}/profile.log" 2>&1
    python3 -m tests.gpu.phase_probe /tmp/ck/sd1.safetensors --batch 8 --out "${out}/phase_probe.json" >> "${out}/profile.log" 2>&1
    for kind in sd1 sdxl; do python3 -m tests.gpu.load_profile "/tmp/ck/${kind}.safetensors"; done \
        > "${out}/load_profile.txt" 2>&1
fi
if run vae; then
    python3 -m tests.gpu.vae_probe /tmp/ck/sd1.safetensors /tmp/ck/sdxl.safetensors --compile \
        --out "${out}/vae_probe.json" > "${out}/vae_probe.log" 2>&1
fi
if run kernels; then
    python3 -m tests.gpu.kernel_cache_probe /tmp/ck/sd1.safetensors --out "${out}/kernel_cache_probe.json" \
        > "${out}/kernel_cache_probe.log" 2>&1
fi
if run startup; then
    {
        for _ in 1 2 3; do python3 -m tests.gpu.startup_profile /tmp/ck/sd1.safetensors; done
        python3 -m tests.gpu.startup_profile /tmp/ck/sd1.safetensors --warm-up
    } > "${out}/startup_profile.txt" 2>&1
fi
if run w6; then  # W6 alone, four new processes (the first also fills the bytecode cache)
    python3 -c "
import json; from pathlib import Path; from tests.gpu.bench import first_image_seconds
print(json.dumps([first_image_seconds(Path('/tmp/ck/sd1.safetensors'), 512) for _ in range(4)], indent=1))" \
        > "${out}/w6.json" 2> "${out}/w6.log"
fi
if run app; then
    python3 -m tests.gpu.app_start /tmp/ck/sd1.safetensors --runs 3 --restarts --out "${out}/app_start.json" \
        > "${out}/app_start.log" 2>&1
fi
if run lora; then
    python3 -m tests.gpu.lora_probe /tmp/ck/sd1.safetensors /tmp/ck/sdxl.safetensors --out "${out}/lora_probe.json" \
        > "${out}/lora_probe.log" 2>&1
    python3 -m tests.gpu.pin_probe "" "pinned_use_cuda_host_register:True,pinned_num_register_threads:8" \
        > "${out}/pin_probe.txt" 2>&1
fi
if run previews; then
    python3 -m tests.gpu.preview_probe /tmp/ck/sd1.safetensors /tmp/ck/sdxl.safetensors \
        --out "${out}/preview_probe.json" > "${out}/preview_probe.log" 2>&1
fi
if run tests; then
    python3 -m pytest -m gpu -q tests/gpu > "${out}/gpu_tests.txt" 2>&1
fi
grep -h '^{' "${out}"/*.txt 2>/dev/null | cut -c1-300
ls -la "${out}"
