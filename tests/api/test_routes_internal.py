"""A1111's /internal routes beside the web page: a task followed by its id (force_task_id), with live previews."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.conftest import LiveServer, decode_image, start_server


@pytest.fixture(scope="module")
def ui_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from start_server(tmp_path_factory.mktemp("webui-internal"), tiny_models_dir, [], ui=True)


def _progress(server: LiveServer, task: str, preview_id: int = -1) -> dict:
    body = {"id_task": task, "id_live_preview": preview_id, "live_preview": True}
    response = requests.post(f"{server.url}/internal/progress", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_task_is_followed_from_queue_to_completion_with_its_previews(ui_server):
    assert requests.get(f"{ui_server.url}/internal/ping", timeout=30).json() == {}
    assert requests.get(f"{ui_server.url}/internal/pending-tasks", timeout=30).json() == {"size": 0, "tasks": []}
    unknown = _progress(ui_server, "task(nobody)")
    assert (unknown["active"], unknown["queued"], unknown["completed"]) == (False, False, False)
    assert unknown["textinfo"] == "Waiting..." and unknown["id_live_preview"] == -1

    results = {}

    def run(task: str, steps: int) -> None:
        payload = {"prompt": task, "width": 256, "height": 256, "steps": steps, "force_task_id": task}
        results[task] = ui_server.post("txt2img", payload)

    long = threading.Thread(target=run, args=("task(long)", 500))
    long.start()
    deadline, state = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        state = _progress(ui_server, "task(long)")
        if state["active"] and state["live_preview"]:
            break
        time.sleep(0.05)
    assert state["active"] and not state["queued"] and 0 < state["progress"] < 1 and state["eta"] > 0
    assert state["live_preview"].startswith("data:image/png;base64,")
    preview = decode_image(state["live_preview"].split(",", 1)[1])
    assert preview.size == (32, 32) and state["id_live_preview"] >= 1
    again = _progress(ui_server, "task(long)", state["id_live_preview"])
    assert again["live_preview"] is None or again["id_live_preview"] > state["id_live_preview"]  # only newer ones

    second = threading.Thread(target=run, args=("task(next)", 2))
    second.start()
    deadline = time.monotonic() + 30
    while ui_server.ctx.jobs.pending == [] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert requests.get(f"{ui_server.url}/internal/pending-tasks", timeout=30).json() == {
        "size": 1,
        "tasks": ["task(next)"],
    }
    waiting = _progress(ui_server, "task(next)")
    assert waiting["queued"] and not waiting["active"] and waiting["textinfo"] == "In queue: 1/1"

    assert ui_server.post("interrupt").json() == {}
    long.join(60)
    second.join(60)
    assert results["task(long)"].status_code == 200 and results["task(next)"].status_code == 200
    for task in ("task(long)", "task(next)"):
        done = _progress(ui_server, task)
        assert done["completed"] and not done["active"] and not done["queued"], task


def test_with_only_a_ui_login_the_internal_routes_are_left_out(tmp_path, tiny_models_dir):
    import webui
    from modules.flags import parse_flags

    argv = ["--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_models_dir), "--no-download-sd-model"]
    login = ["--gradio-auth", "me:pw"]
    for extra, mounted in ((login, False), ([*login, "--api-auth", "a:b"], True), ([], True)):
        ctx = webui.create_context(parse_flags([*argv, *extra], environ={}))
        try:
            paths = webui.create_app(ctx).openapi()["paths"]
        finally:
            ctx.close()
        assert ("/internal/progress" in paths) is mounted, extra
