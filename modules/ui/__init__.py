"""Gradio web UI: ``create_ui(ctx)`` builds the page, ``ui_launch_kwargs(ctx)`` the arguments to mount it."""

from modules.ui.blocks import create_ui
from modules.ui.launch import ui_launch_kwargs

__all__ = ["create_ui", "ui_launch_kwargs"]
