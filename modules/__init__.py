"""Stable Diffusion web UI (AUTOMATIC1111-compatible)."""
