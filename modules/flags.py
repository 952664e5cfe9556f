"""A1111's command-line flags: one argparse parser, built on demand (never at import time), plus LaunchFlags.

Every flag of AUTOMATIC1111 v1.10.1 is accepted so existing ``webui-user`` files keep working. Flags that have no
meaning here are listed in ``IGNORED_FLAGS`` and logged once at start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from modules.errors import SettingsError

logger = logging.getLogger(__name__)

INSTALL_DIR = Path(__file__).resolve().parent.parent

# (flag, argparse kwargs). Implemented flags first; the dest names equal A1111's (vars(cmd_opts) for /cmd-flags).
_STR = {"type": str, "default": None}
_IMPLEMENTED: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--port", {"type": int, "default": None, "help": "server port (default 7860; 7861 with --nowebui)"}),
    ("--listen", {"action": "store_true", "help": "listen on 0.0.0.0"}),
    ("--server-name", {**_STR, "help": "bind address (overrides --listen)"}),
    ("--data-dir", {"type": str, "default": str(INSTALL_DIR), "help": "base dir for config, outputs, models"}),
    ("--models-dir", {**_STR, "help": "base dir for models (default <data-dir>/models)"}),
    ("--ckpt-dir", {**_STR, "help": "additional checkpoint directory"}),
    *(
        (f"--{kind}-models-path", {**_STR, "help": f"folder of {kind.upper()} upscaler models"})
        for kind in ("esrgan", "realesrgan", "dat", "bsrgan", "scunet", "swinir")
    ),
    ("--lora-dir", {**_STR, "help": "folder of LoRA networks (default <models-dir>/Lora)"}),
    ("--embeddings-dir", {**_STR, "help": "folder of textual-inversion embeddings (default <data-dir>/embeddings)"}),
    ("--vae-dir", {**_STR, "help": "folder of VAE files for the sd_vae setting (default <models-dir>/VAE)"}),
    ("--vae-path", {**_STR, "help": "a VAE file used with every model; the sd_vae setting then has no effect"}),
    ("--styles-file", {"action": "append", "default": [], "help": "styles CSV file (repeatable, wildcards allowed)"}),
    ("--ckpt", {**_STR, "help": "checkpoint to add to the list and load"}),
    ("--no-download-sd-model", {"action": "store_true", "help": "do not download SD1.5 when no checkpoint exists"}),
    ("--use-cpu", {"nargs": "+", "default": [], "help": "modules to run on the CPU ('all' or 'sd')"}),
    ("--no-half", {"action": "store_true", "help": "keep the model in fp32"}),
    ("--no-half-vae", {"action": "store_true", "help": "keep the VAE in fp32"}),
    ("--precision", {"choices": ["full", "half", "autocast"], "default": "autocast", "help": "evaluation precision"}),
    ("--device-id", {**_STR, "help": "CUDA device index"}),
    ("--autolaunch", {"action": "store_true", "help": "open the UI in the browser at start"}),
    ("--theme", {**_STR, "choices": [None, "light", "dark"], "help": "UI theme"}),
    ("--gradio-auth", {**_STR, "help": "UI login as user:password[,user:password]"}),
    ("--gradio-auth-path", {**_STR, "help": "file with UI logins, one user:password per line or comma separated"}),
    ("--skip-version-check", {"action": "store_true", "help": "accepted (A1111); no version warnings are printed"}),
    ("--disable-safe-unpickle", {"action": "store_true", "help": "load .ckpt pickles without the allow-list"}),
    ("--api", {"action": "store_true", "help": "serve the /sdapi/v1 API"}),
    ("--nowebui", {"action": "store_true", "help": "serve the API only"}),
    ("--api-auth", {**_STR, "help": "HTTP Basic auth for the API: user:password[,user:password]"}),
    ("--api-log", {"action": "store_true", "help": "log API requests"}),
    ("--api-server-stop", {"action": "store_true", "help": "enable /sdapi/v1/server-{kill,restart,stop}"}),
    ("--cors-allow-origins", {**_STR, "help": "comma-separated CORS origins"}),
    ("--cors-allow-origins-regex", {**_STR, "help": "CORS origin regex"}),
    ("--subpath", {**_STR, "help": "root path behind a reverse proxy"}),
    ("--tls-keyfile", {**_STR, "help": "TLS key file"}),
    ("--tls-certfile", {**_STR, "help": "TLS certificate file"}),
    ("--timeout-keep-alive", {"type": int, "default": 30, "help": "uvicorn keep-alive seconds"}),
    ("--ui-settings-file", {"type": str, "default": None, "help": "settings file (default <data-dir>/config.json)"}),
    (
        "--ui-config-file",
        {"type": str, "default": None, "help": "UI defaults file (default <data-dir>/ui-config.json)"},
    ),
    ("--no-hashing", {"action": "store_true", "help": "do not compute checkpoint SHA-256"}),
    ("--skip-load-model-at-start", {"action": "store_true", "help": "do not load a model at start"}),
    ("--loglevel", {**_STR, "help": "log level (DEBUG, INFO, WARNING…)"}),
    ("--medvram", {"action": "store_true", "help": "offload model parts to the CPU between uses"}),
    ("--lowvram", {"action": "store_true", "help": "aggressive sequential offload (slow)"}),
    ("--medvram-sdxl", {"action": "store_true", "help": "--medvram for SDXL models only"}),
    ("--disable-cuda-graphs", {"action": "store_true", "help": "run the UNet eagerly, without CUDA graphs"}),
    ("--bf16", {"action": "store_true", "help": "UNet and text encoders in bfloat16 instead of float16 (CUDA)"}),
    (
        "--compile",
        {"action": "store_true", "help": "torch.compile the UNet in the background (CUDA; cached on disk)"},
    ),
)

# Launcher-only flags (webui.sh / webui.bat act on them); webui.py accepts and ignores them.
_LAUNCHER: tuple[str, ...] = (
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-torch-cuda-test",
    "--reinstall-torch",
    "--exit",
    "--skip-python-version-check",
    "--reinstall-xformers",
    "--update-check",
    "--update-all-extensions",
    "--test-server",
    "--log-startup",
    "--dump-sysinfo",
    "-f",
)

# Accepted for compatibility; no meaning here (yet). store_true flags, then flags with a value.
_IGNORED_BOOL: tuple[str, ...] = (
    "--share",
    "--disable-tls-verify",
    "--no-gradio-queue",
    "--gradio-debug",
    "--enable-insecure-extension-access",
    "--use-ipex",
    "--upcast-sampling",
    "--lowram",
    "--disable-model-loading-ram-optimization",
    "--opt-channelslast",
    "--disable-nan-check",
    "--xformers",
    "--force-enable-xformers",
    "--xformers-flash-attention",
    "--opt-sdp-attention",
    "--opt-sdp-no-mem-attention",
    "--opt-split-attention",
    "--opt-split-attention-v1",
    "--opt-split-attention-invokeai",
    "--opt-sub-quad-attention",
    "--disable-opt-split-attention",
    "--do-not-download-clip",
    "--allow-code",
    "--disable-all-extensions",
    "--disable-extra-extensions",
    "--ui-debug-mode",
    "--freeze-settings",
    "--hide-ui-dir-config",
    "--use-textbox-seed",
    "--disable-console-progressbars",
    "--administrator",
    "--no-prompt-history",
    "--unix-filenames-sanitization",
    "--always-batch-cond-uncond",
    "--unload-gfpgan",
    "--deepdanbooru",
    "--show-negative-prompt",
    "--gradio-queue",
    "--add-stop-route",
    "--enable-console-prompts",
    "--lyco-dir-backcompat",
    "--disable-safe-unpickle-warning",
    "--no-half-controlnet",
    "--api-server-stop-compat",
)
_IGNORED_VALUE: tuple[str, ...] = (
    "--ngrok",
    "--ngrok-options",
    "--ngrok-region",
    "--gradio-allowed-path",
    "--config",
    "--hypernetwork-dir",
    "--codeformer-models-path",
    "--gfpgan-models-path",
    "--ldsr-models-path",
    "--clip-models-path",
    "--localizations-dir",
    "--textual-inversion-templates-dir",
    "--sub-quad-q-chunk-size",
    "--sub-quad-kv-chunk-size",
    "--sub-quad-chunk-threshold",
    "--freeze-settings-in-sections",
    "--freeze-specific-settings",
    "--filenames-max-length",
    "--max-batch-count",
    "--gradio-img2img-tool",
    "--gradio-inpaint-tool",
    "--gradio-allowed-path-compat",
    "--tls-keyfile-compat",
)
IGNORED_FLAGS: frozenset[str] = frozenset(_IGNORED_BOOL + _IGNORED_VALUE)


def build_parser() -> argparse.ArgumentParser:
    """Return a parser that knows every A1111 flag; unknown flags are errors (A1111's behaviour)."""
    parser = argparse.ArgumentParser(prog="webui.py", description="Stable Diffusion web UI (A1111-compatible)")
    for flag, kwargs in _IMPLEMENTED:
        parser.add_argument(flag, **kwargs)
    for flag in _LAUNCHER:
        parser.add_argument(flag, action="store_true", help="launcher flag (webui.sh / webui.bat)")
    for flag in _IGNORED_BOOL:
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in _IGNORED_VALUE:
        parser.add_argument(flag, type=str, default=None, action="append", help=argparse.SUPPRESS)
    return parser


class LaunchFlags(BaseModel):
    """Parsed command-line flags, frozen. ``raw`` keeps ``vars(args)`` for ``/sdapi/v1/cmd-flags``."""

    model_config = ConfigDict(frozen=True)

    port: int | None = None
    listen: bool = False
    server_name: str | None = None
    data_dir: Path = INSTALL_DIR
    models_dir: Path | None = None
    ckpt_dir: Path | None = None
    ckpt: Path | None = None
    no_download_sd_model: bool = False
    use_cpu: tuple[str, ...] = ()
    no_half: bool = False
    no_half_vae: bool = False
    precision: str = "autocast"
    device_id: str | None = None
    autolaunch: bool = False
    theme: str | None = None
    gradio_auth: str | None = None
    gradio_auth_path: str | None = None
    skip_version_check: bool = False
    disable_safe_unpickle: bool = False
    api: bool = False
    nowebui: bool = False
    api_auth: str | None = None
    api_log: bool = False
    api_server_stop: bool = False
    cors_allow_origins: str | None = None
    cors_allow_origins_regex: str | None = None
    subpath: str | None = None
    tls_keyfile: str | None = None
    tls_certfile: str | None = None
    timeout_keep_alive: int = 30
    ui_settings_file: Path | None = None
    ui_config_file: Path | None = None
    no_hashing: bool = False
    skip_load_model_at_start: bool = False
    loglevel: str | None = None
    medvram: bool = False
    lowvram: bool = False
    medvram_sdxl: bool = False
    disable_cuda_graphs: bool = False
    compile: bool = False
    bf16: bool = False
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    vae_dir: Path | None = None
    vae_path: Path | None = None
    styles_file: tuple[str, ...] = ()
    esrgan_models_path: Path | None = None
    realesrgan_models_path: Path | None = None
    dat_models_path: Path | None = None
    bsrgan_models_path: Path | None = None
    scunet_models_path: Path | None = None
    swinir_models_path: Path | None = None
    raw: dict[str, Any] = {}

    @property
    def models_path(self) -> Path:
        """``--models-dir`` or ``<data-dir>/models``."""
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def checkpoint_dirs(self) -> tuple[Path, ...]:
        """Directories scanned for checkpoints: ``--ckpt-dir`` (if given) then ``models/Stable-diffusion``."""
        default = self.models_path / "Stable-diffusion"
        return (self.ckpt_dir, default) if self.ckpt_dir is not None else (default,)

    @property
    def lora_path(self) -> Path:
        """``--lora-dir`` or ``models/Lora``: where ``<lora:name:…>`` prompt tags find their files."""
        return self.lora_dir if self.lora_dir is not None else self.models_path / "Lora"

    @property
    def embeddings_path(self) -> Path:
        """``--embeddings-dir`` or ``<data-dir>/embeddings``: textual-inversion embeddings named in prompts."""
        return self.embeddings_dir if self.embeddings_dir is not None else self.data_dir / "embeddings"

    @property
    def vae_folder(self) -> Path:
        """``--vae-dir`` or ``models/VAE``: the files the ``sd_vae`` setting names."""
        return self.vae_dir if self.vae_dir is not None else self.models_path / "VAE"

    @property
    def style_files(self) -> tuple[str, ...]:
        """``--styles-file`` patterns, or ``<data-dir>/styles.csv`` (A1111's default)."""
        return self.styles_file or (str(self.data_dir / "styles.csv"),)

    @property
    def upscaler_dirs(self) -> tuple[Path, ...]:
        """Folders scanned for upscaler models: ``models/<ESRGAN|RealESRGAN|…>`` or the ``--*-models-path`` flags."""
        given = {
            "ESRGAN": self.esrgan_models_path,
            "RealESRGAN": self.realesrgan_models_path,
            "DAT": self.dat_models_path,
            "BSRGAN": self.bsrgan_models_path,
            "ScuNET": self.scunet_models_path,
            "SwinIR": self.swinir_models_path,
        }
        defaults = {name: self.models_path / name for name in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")}
        defaults |= {"BSRGAN": self.models_path / "BSRGAN", "ScuNET": self.models_path / "ScuNET"}
        return tuple(dict.fromkeys(given.get(k) or v for k, v in defaults.items()))

    @property
    def settings_file(self) -> Path:
        """``config.json`` path (``--ui-settings-file`` or ``<data-dir>/config.json``)."""
        return self.ui_settings_file if self.ui_settings_file is not None else self.data_dir / "config.json"

    @property
    def host(self) -> str:
        """Bind address: ``--server-name``, else 0.0.0.0 with ``--listen``, else 127.0.0.1."""
        return self.server_name or ("0.0.0.0" if self.listen else "127.0.0.1")

    @property
    def server_port(self) -> int:
        """``--port``, else 7861 with ``--nowebui``, else 7860."""
        return self.port if self.port is not None else (7861 if self.nowebui else 7860)


def parse_flags(argv: Sequence[str], environ: dict[str, str] | None = None) -> LaunchFlags:
    """Parse ``COMMANDLINE_ARGS`` (from ``environ``) followed by ``argv`` into LaunchFlags.

    Raises:
        SettingsError: On an unknown flag or a bad value, unless ``IGNORE_CMD_ARGS_ERRORS`` is set (then unknown
            flags are logged and skipped).
    """
    env = os.environ if environ is None else environ
    args = shlex.split(env.get("COMMANDLINE_ARGS", "")) + list(argv)
    parser = build_parser()
    if env.get("IGNORE_CMD_ARGS_ERRORS"):
        ns, unknown = parser.parse_known_args(args)
        if unknown:
            logger.warning("Ignoring unknown command-line arguments: %s", " ".join(unknown))
    else:
        try:
            ns = parser.parse_args(args)
        except SystemExit as exc:
            if exc.code == 0:
                raise
            raise SettingsError(f"Invalid command-line arguments: {' '.join(args)} (see webui.py --help)") from exc
    raw = vars(ns)
    known = {k: v for k, v in raw.items() if k in LaunchFlags.model_fields and v is not None}
    known["use_cpu"] = tuple(raw.get("use_cpu") or ())
    flags = LaunchFlags(**known, raw=raw)
    if flags.vae_path is not None and not flags.vae_path.is_file():
        raise SettingsError(f"--vae-path: {flags.vae_path} is not a file (give a .safetensors, .pt or .ckpt VAE)")
    return flags


def ignored_flags_used(flags: LaunchFlags) -> list[str]:
    """Return the A1111 flags given on the command line that have no effect here (to log them once)."""
    return sorted(f for f in IGNORED_FLAGS if flags.raw.get(f.lstrip("-").replace("-", "_")))
