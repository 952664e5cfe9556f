"""ui_launch_kwargs: logins from --gradio-auth / --gradio-auth-path, theme, CSS and the page script."""

from __future__ import annotations

import inspect

import gradio as gr
import pytest

from modules.errors import SettingsError
from modules.flags import parse_flags
from modules.ui.launch import parse_auth, ui_launch_kwargs


def test_parse_auth_splits_on_first_colon_only(tmp_path):
    assert parse_auth("alice:pa:ss,bob:x") == [("alice", "pa:ss"), ("bob", "x")]
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("carol:c1\ndave:d:2, erin:e\n\n", encoding="utf-8")
    assert parse_auth("alice:a", auth_file) == [("alice", "a"), ("carol", "c1"), ("dave", "d:2"), ("erin", "e")]
    assert parse_auth(None) == []


def test_parse_auth_errors_are_readable(tmp_path):
    with pytest.raises(SettingsError, match="must have the form user:password"):
        parse_auth("justaname")
    with pytest.raises(SettingsError, match="--gradio-auth-path: cannot read"):
        parse_auth(None, tmp_path / "missing.txt")


def test_launch_kwargs_fit_mount_gradio_app(tmp_path):
    flags = parse_flags(["--data-dir", str(tmp_path), "--gradio-auth", "u:p", "--theme", "dark"], environ={})
    kwargs = ui_launch_kwargs(type("Ctx", (), {"flags": flags})())
    assert kwargs["auth"] == [("u", "p")]
    assert set(kwargs) <= set(inspect.signature(gr.mount_gradio_app).parameters)
    assert isinstance(kwargs["theme"], gr.themes.Base)
    assert "#txt2img_token_counter" in kwargs["css"]
    assert "__theme" in kwargs["js"] and "'dark'" in kwargs["js"]
    assert "ctrlKey" in kwargs["js"] and "_generate" in kwargs["js"]


def test_launch_kwargs_without_auth_or_theme(tmp_path):
    flags = parse_flags(["--data-dir", str(tmp_path)], environ={})
    kwargs = ui_launch_kwargs(type("Ctx", (), {"flags": flags})())
    assert "auth" not in kwargs
    assert "__theme" not in kwargs["js"]
    assert "__TOOLTIPS__" not in kwargs["js"] and "Reuse seed from last generation" in kwargs["js"]
