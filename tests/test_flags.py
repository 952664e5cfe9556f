from pathlib import Path

import pytest

from modules.errors import SettingsError
from modules.flags import IGNORED_FLAGS, build_parser, ignored_flags_used, parse_flags


def test_defaults(tmp_path):
    flags = parse_flags([], environ={})
    assert flags.server_port == 7860
    assert flags.host == "127.0.0.1"
    assert flags.checkpoint_dirs[-1].name == "Stable-diffusion"


def test_data_dir_moves_everything(tmp_path):
    flags = parse_flags(["--data-dir", str(tmp_path)], environ={})
    assert flags.settings_file == tmp_path / "config.json"
    assert flags.checkpoint_dirs == (tmp_path / "models" / "Stable-diffusion",)


def test_models_dir_and_ckpt_dir(tmp_path):
    flags = parse_flags(["--models-dir", str(tmp_path / "m"), "--ckpt-dir", str(tmp_path / "c")], environ={})
    assert flags.checkpoint_dirs == (tmp_path / "c", tmp_path / "m" / "Stable-diffusion")


def test_commandline_args_env_then_argv():
    flags = parse_flags(["--port", "9000"], environ={"COMMANDLINE_ARGS": "--listen --port 8000 --no-half"})
    assert flags.port == 9000  # argv comes after COMMANDLINE_ARGS and wins
    assert flags.listen and flags.no_half
    assert flags.host == "0.0.0.0"


def test_server_name_overrides_listen_and_nowebui_port():
    flags = parse_flags(["--listen", "--server-name", "10.1.2.3", "--nowebui"], environ={})
    assert flags.host == "10.1.2.3"
    assert flags.server_port == 7861


@pytest.mark.parametrize(
    "args",
    [
        ["--xformers", "--medvram", "--opt-sdp-attention"],
        ["--lora-dir", "/x", "--styles-file", "a.csv", "--styles-file", "b.csv"],
        ["--skip-torch-cuda-test", "--skip-prepare-environment", "--exit", "-f"],
        ["--precision", "full", "--use-cpu", "all", "interrogate", "--device-id", "1"],
        ["--theme", "dark", "--gradio-auth", "a:b:c", "--disable-safe-unpickle", "--skip-version-check"],
    ],
)
def test_a1111_flags_are_accepted(args):
    flags = parse_flags(args, environ={})
    assert flags.raw  # parsed without error


def test_use_cpu_all():
    assert parse_flags(["--use-cpu", "all"], environ={}).use_cpu == ("all",)


def test_unknown_flag_fails_unless_ignored():
    with pytest.raises(SettingsError, match="Invalid command-line arguments"):
        parse_flags(["--no-such-flag"], environ={})
    flags = parse_flags(["--no-such-flag", "--port", "1234"], environ={"IGNORE_CMD_ARGS_ERRORS": "1"})
    assert flags.port == 1234


def test_bad_value_fails():
    with pytest.raises(SettingsError):
        parse_flags(["--precision", "quarter"], environ={})


def test_every_ignored_flag_is_registered():
    parser = build_parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    assert known >= IGNORED_FLAGS


def test_ignored_flags_reported():
    argv = ["--xformers", "--hypernetwork-dir", "x", "--lora-dir", "y", "--embeddings-dir", "z", "--port", "1"]
    flags = parse_flags(argv, environ={})
    assert ignored_flags_used(flags) == ["--hypernetwork-dir", "--xformers"]
    assert flags.lora_path == Path("y") and parse_flags([], environ={}).lora_path.parts[-2:] == ("models", "Lora")
    assert flags.embeddings_path == Path("z") and parse_flags([], environ={}).embeddings_path.name == "embeddings"


def test_vae_path_must_be_a_file(tmp_path):
    vae = tmp_path / "my.vae.safetensors"
    vae.write_bytes(b"x")
    assert parse_flags(["--vae-path", str(vae)], environ={}).vae_path == vae
    assert "--vae-path" not in ignored_flags_used(parse_flags(["--vae-path", str(vae)], environ={}))
    with pytest.raises(SettingsError, match=r"--vae-path: .*missing\.pt is not a file"):
        parse_flags(["--vae-path", str(tmp_path / "missing.pt")], environ={})
