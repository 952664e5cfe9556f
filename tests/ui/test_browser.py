"""End to end: the real server (webui.create_app + uvicorn) on the tiny checkpoints, driven by a headless browser
(Playwright + Debian's chromium) and by gradio_client.

Set ``UI_SCREENSHOT_DIR`` to keep the screenshots; otherwise they go to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The real app on a free 127.0.0.1 port, with sd1.safetensors selected, over a temporary data dir."""
    import uvicorn

    import webui
    from modules.flags import parse_flags

    data_dir = tmp_path_factory.mktemp("webui-data")
    (data_dir / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}), encoding="utf-8")
    port = _free_port()
    flags = parse_flags(
        [
            "--data-dir",
            str(data_dir),
            "--ckpt-dir",
            str(tiny_models_dir),
            "--no-download-sd-model",
            "--port",
            str(port),
        ],
        environ={},
    )
    ctx = webui.create_context(flags)
    app = webui.create_app(ctx)
    ctx.start()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not uv.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.1)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", ctx=ctx, data_dir=data_dir)
    uv.should_exit = True
    thread.join(15)
    ctx.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    page.wait_for_selector("#txt2img_prompt textarea")
    yield page
    context.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("UI_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    assert path.stat().st_size > 10_000
    return path


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _generate(page, prompt: str, steps: int = 4) -> str:
    """Fill the form, click Generate, wait for the infotext of the new image; return the infotext text."""
    page.locator("#txt2img_prompt textarea").fill(prompt)
    _set_number(page, "txt2img_steps", steps)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img")
    info.filter(has_text=prompt).wait_for()
    page.locator("#txt2img_gallery img").first.wait_for()
    return info.inner_text()


def test_generate_pnginfo_and_checkpoint_switch(page, server, tmp_path):
    # 1. The page: title, tabs, the selected checkpoint, the token counter.
    assert page.title() == "Stable Diffusion"
    for label in ("txt2img", "img2img", "PNG Info", "Settings"):
        assert page.get_by_role("tab", name=label).is_visible()
    assert page.locator("#setting_sd_model_checkpoint input").input_value().startswith("sd1.safetensors")
    page.locator("#txt2img_prompt textarea").fill("a red apple on a table")
    page.locator("#txt2img_token_counter").filter(has_text=re.compile(r"\b[1-9]\d*/75\b")).wait_for()

    # 2. Generate 64×64 in 4 steps; the infotext and the saved PNG.
    text = _generate(page, "a red apple on a table")
    assert "Steps: 4" in text and "Size: 64x64" in text and "Model: sd1" in text
    seed = int(re.search(r"Seed: (\d+)", text).group(1))
    day = datetime.now().strftime("%Y-%m-%d")
    saved = sorted((server.data_dir / "outputs" / "txt2img-images" / day).glob(f"*-{seed}.png"))
    assert len(saved) == 1, "the generated image was not saved under outputs/txt2img-images/<date>/"
    png = saved[0]
    info_json = json.loads(page.locator("#generation_info_txt2img textarea").input_value())
    assert info_json["seed"] == seed and info_json["steps"] == 4

    # 3. ♻️ puts the image's seed into the seed box; 🎲 sets −1 again.
    page.locator("#txt2img_reuse_seed").click()
    page.wait_for_function(f"document.querySelector('#txt2img_seed input').value == '{seed}'")
    _screenshot(page, tmp_path, "txt2img.png")
    page.locator("#txt2img_random_seed").click()
    page.wait_for_function("document.querySelector('#txt2img_seed input').value == '-1'")

    # 4. PNG Info: upload the saved file, read its parameters, send them back to txt2img.
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(png))
    page.locator("#pnginfo_html").filter(has_text="Steps: 4").wait_for()
    assert f"Seed: {seed}" in page.locator("#pnginfo_html").inner_text()
    _screenshot(page, tmp_path, "pnginfo.png")
    page.locator("#txt2img_tab").click()
    page.locator("#txt2img_prompt textarea").wait_for(state="visible")
    page.wait_for_function(f"document.querySelector('#txt2img_seed input').value == '{seed}'")
    assert page.locator("#txt2img_prompt textarea").input_value() == "a red apple on a table"

    # 5. Switch the checkpoint from the quicksettings dropdown; the model loads on the worker.
    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^sd2v\.safetensors")).click()
    deadline = time.time() + TIMEOUT_MS / 1000
    while not (server.ctx.models.current and server.ctx.models.current.checkpoint.name == "sd2v.safetensors"):
        assert time.time() < deadline, "sd2v was not loaded"
        time.sleep(0.2)
    assert server.ctx.settings.sd_model_checkpoint.startswith("sd2v.safetensors")
    text = _generate(page, "a blue pear")
    assert "Model: sd2v" in text
    _screenshot(page, tmp_path, "txt2img-sd2v.png")

    # 6. Settings: tick a checkbox, Apply, and the change is reported and saved to config.json.
    page.get_by_role("tab", name="Settings").click()
    page.get_by_role("tab", name="Saving images/grids").click()
    page.locator("#setting_save_txt input[type=checkbox]").check()
    page.locator("#settings_submit").click()
    page.locator("#settings_result").filter(has_text="1 setting changed: save_txt.").wait_for()
    assert server.ctx.settings.save_txt is True
    assert json.loads((server.data_dir / "config.json").read_text(encoding="utf-8"))["save_txt"] is True
    _screenshot(page, tmp_path, "settings.png")

    # 7. A1111 numbers the first file of an empty folder 00000 (modules/images.py get_next_sequence_number).
    assert png.name == f"00000-{seed}.png"


def test_ctrl_enter_generates_and_interrupt_stops(page, server):
    page.locator("#txt2img_prompt textarea").fill("interrupt me")
    _set_number(page, "txt2img_steps", 150)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_prompt textarea").press("Control+Enter")
    page.locator("#txt2img_progress").filter(has_text=re.compile(r"Step \d+/150")).wait_for()
    # watching the job brings live previews (every 10 steps; Approx NN draws as Approx cheap: 1/8 of 64 px)
    preview = page.locator("#txt2img_progress .livePreview img")
    preview.wait_for()
    assert preview.evaluate("img => img.naturalWidth") == 8
    page.wait_for_function(r"() => /^\[\d+%\] /.test(document.title)")  # the progress leads the window title
    page.locator("#txt2img_interrupt").click()
    page.locator("#html_info_txt2img").filter(has_text="interrupt me").wait_for()
    steps = int(re.search(r"Steps: (\d+)", page.locator("#html_info_txt2img").inner_text()).group(1))
    assert steps == 150
    assert server.ctx.jobs.current is None or server.ctx.jobs.current.kind != "txt2img"
    page.wait_for_function(r"() => !/^\[\d+%\] /.test(document.title)")


def test_generate_forever_repeats_until_cancelled(page, server):
    page.locator("#txt2img_prompt textarea").fill("again and again")
    _set_number(page, "txt2img_steps", 2)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    jobs, menu = server.ctx.jobs, page.locator("#generate_context_menu .context-menu-item")
    start = jobs.completed_count
    page.locator("#txt2img_generate").click(button="right")
    menu.filter(has_text="Generate forever").click()
    deadline = time.time() + TIMEOUT_MS / 1000
    while jobs.completed_count < start + 3:  # it goes on by itself after each result
        assert time.time() < deadline, f"only {jobs.completed_count - start} jobs ran"
        time.sleep(0.1)
    page.locator("#txt2img_generate").click(button="right")
    menu.filter(has_text="Cancel generate forever").click()
    time.sleep(2)  # the job running at the cancel may still finish
    settled = jobs.completed_count
    time.sleep(2)
    assert jobs.completed_count == settled and jobs.current is None and jobs.pending == []
    page.locator("#html_info_txt2img").filter(has_text="again and again").wait_for()


def test_gradio_client_txt2img_and_pnginfo(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(server.url, verbose=False)
    _, gallery, html, info_json = client.predict(
        prompt="api apple", negative_prompt="", steps=3, width=64, height=64, seed=123, api_name="/txt2img"
    )
    assert len(gallery) == 1
    info = json.loads(info_json)
    assert info["all_seeds"] == [123] and "Steps: 3" in html
    html, text = client.predict(gradio_client.handle_file(gallery[0]["image"]), api_name="/pnginfo")
    assert "Steps: 3" in text and "Seed: 123" in text and "<b>parameters</b>" in html
    with pytest.raises(gradio_client.exceptions.AppError, match="Height must be a multiple of 8"):
        client.predict(prompt="x", negative_prompt="", height=100, api_name="/txt2img")


EMPTY_EDITOR = {"background": None, "layers": [], "composite": None}
# gradio_client requires every image and textbox argument of /img2img (it has no default for them).
EDITORS = {
    "inpaint_editor": EMPTY_EDITOR,
    "sketch_editor": EMPTY_EDITOR,
    "inpaint_sketch_editor": EMPTY_EDITOR,
    "inpaint_upload_image": None,
    "inpaint_upload_mask": None,
    "batch_input_dir": "",
    "batch_output_dir": "",
    "batch_mask_dir": "",
}


def test_gradio_client_img2img_and_inpaint(server, tmp_path):
    import numpy as np
    from PIL import Image

    gradio_client = pytest.importorskip("gradio_client")
    src = tmp_path / "init.png"
    Image.fromarray((np.random.RandomState(1).rand(64, 64, 3) * 255).astype("uint8")).save(src)
    client = gradio_client.Client(server.url, verbose=False)
    _, gallery, html, info_json = client.predict(
        prompt="a cat",
        negative_prompt="",
        steps=4,
        width=64,
        height=64,
        seed=5,
        init_image=gradio_client.handle_file(str(src)),
        denoising_strength=0.5,
        **EDITORS,
        api_name="/img2img",
    )
    assert len(gallery) == 1 and "Denoising strength: 0.5" in html
    assert json.loads(info_json)["denoising_strength"] == 0.5
    assert list((server.data_dir / "outputs" / "img2img-images").rglob("*-5.png"))
    with pytest.raises(gradio_client.exceptions.AppError, match="Upload an image"):
        client.predict(prompt="x", negative_prompt="", init_image=None, **EDITORS, api_name="/img2img")
    # the Script dropdown: Poor man's outpainting to the right by 32 px → a 96x64 canvas (rounded to 128x64)
    _, gallery, html, _ = client.predict(
        prompt="sky",
        negative_prompt="",
        steps=2,
        seed=6,
        init_image=gradio_client.handle_file(str(src)),
        denoising_strength=1.0,
        script_name="Poor man's outpainting",
        outpaint_pixels=32,
        outpaint_direction=["right"],
        **EDITORS,
        api_name="/img2img",
    )
    assert "Masked content: fill" in html and "Size: 128x64" in html
    # Outpainting mk2 downwards: its own controls (the noise-filled border, mask blur 8 by default)
    _, gallery, html, _ = client.predict(
        prompt="sea",
        negative_prompt="",
        steps=2,
        seed=6,
        init_image=gradio_client.handle_file(str(src)),
        denoising_strength=0.8,
        script_name="Outpainting mk2",
        mk2_pixels=32,
        mk2_direction=["down"],
        **EDITORS,
        api_name="/img2img",
    )
    assert "Mask blur: 8" in html and "Size: 64x128" in html


def _upload_and_paint(page, src, tmp_path):
    """Put ``src`` into the Inpaint canvas and paint one stroke across its middle with the mouse."""
    editor = page.locator("#img2maskimg")
    editor.locator("input[type=file]").first.set_input_files(str(src))
    canvas = editor.locator("canvas").first
    canvas.wait_for()
    editor.locator("button[aria-label='Zoom in']").wait_for(timeout=60_000)  # the image is in the editor
    page.wait_for_timeout(1000)
    _screenshot(page, tmp_path, "img2img_inpaint.png")
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy)
    page.mouse.down()
    for step in range(1, 13):
        page.mouse.move(cx - 30 + step * 5, cy + step, steps=2)
    page.mouse.up()


def test_inpaint_draw_mask_and_generate(page, server, tmp_path):
    """Upload into the Inpaint canvas, paint a stroke with the mouse, generate: an image and its infotext appear."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "inpaint.png"
    Image.fromarray((np.random.RandomState(2).rand(64, 64, 3) * 255).astype("uint8")).save(src)
    page.locator("#tab_img2img-button, button[role=tab]:has-text('img2img')").first.click()
    page.locator("#mode_img2img button[role=tab]:has-text('Inpaint')").first.click()
    page.locator("#img2img_prompt textarea").fill("inpaint browser")
    _set_number(page, "img2img_steps", 4)
    _set_number(page, "img2img_width", 64)
    _set_number(page, "img2img_height", 64)
    info = page.locator("#html_info_img2img")
    # Headless Chromium's software canvas intermittently hands gradio's ImageEditor an empty background (seen on
    # the commit before this test changed too: the server then answers "Upload an image … first"); upload, paint
    # and generate again, up to three times, so the test checks our handler rather than that canvas.
    for attempt in range(3):
        _upload_and_paint(page, src, tmp_path)
        page.locator("#img2img_generate").click()
        done = info.filter(has_text="inpaint browser")
        missing = page.get_by_text("Upload an image into the Inpaint canvas first")
        for _ in range(240):
            if done.count() or missing.count():
                break
            page.wait_for_timeout(500)
        if done.count():
            break
        assert attempt < 2, "the inpaint canvas never reached the server"
        missing.first.wait_for(state="hidden", timeout=60_000)  # the error toast goes before the next try
    page.locator("#img2img_gallery img").first.wait_for()
    assert "Denoising strength" in info.inner_text()
    _screenshot(page, tmp_path, "img2img_inpaint_done.png")


def test_a_lora_card_puts_its_tag_in_the_prompt_and_the_image_uses_it(page, server, tiny_models_dir):
    from tests.support.tiny_loras import write_tiny_lora

    write_tiny_lora(tiny_models_dir / "sd1.safetensors", server.data_dir / "models" / "Lora" / "inkwash.safetensors")
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a boat")
    page.locator("#txt2img_extra_tabs button[role=tab]", has_text="Lora").click()
    page.locator("#txt2img_lora_extra_refresh").click()  # the file is newer than the page
    card = page.locator("#txt2img_lora_cards button", has_text="inkwash").first
    card.click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert prompt.input_value() == "a boat <lora:inkwash:1>"
    page.locator("#txt2img_extra_tabs button[role=tab]", has_text="Generation").click()
    _set_number(page, "txt2img_steps", 3)
    _set_number(page, "txt2img_width", 64)
    _set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_generate").click()
    info = page.locator("#html_info_txt2img").filter(has_text="Lora hashes")
    info.wait_for()
    assert "a boat <lora:inkwash:1>" in info.inner_text() and 'Lora hashes: "inkwash: ' in info.inner_text()
    page.locator("#txt2img_extra_tabs button[role=tab]", has_text="Lora").click()
    card.click()  # a second click takes the tag out again
    page.wait_for_function("() => !document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert prompt.input_value() == "a boat"


def test_the_style_editor_saves_a_style_and_writes_it_into_the_prompt(page, server):
    from modules.engine.styles import PromptStyle, read_styles

    page.locator("#txt2img_styles_edit_button").click()
    page.locator("#txt2img_styles_dialog").wait_for(state="visible")
    name = page.locator("#txt2img_styles_edit_select input")
    name.fill("Browser noir")
    name.press("Enter")
    page.locator("#txt2img_edit_style_prompt textarea").fill("film noir, {prompt}")
    page.locator("#txt2img_edit_style_neg_prompt textarea").fill("color")
    page.locator("#txt2img_edit_style_save").click()
    page.locator("#txt2img_edit_style_result").filter(has_text="saved to styles.csv").wait_for()
    assert PromptStyle("Browser noir", "film noir, {prompt}", "color") in read_styles(server.data_dir / "styles.csv")
    # choose it among the tab's styles, then 📋 writes it into the prompts and empties the choice
    page.locator("#txt2img_prompt textarea").fill("a cat")
    page.locator("#txt2img_neg_prompt textarea").fill("")
    page.locator("#txt2img_styles input").click()
    page.get_by_role("option", name="Browser noir").click()
    page.locator("#txt2img_style_apply").click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value == 'film noir, a cat'")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "color"
    page.locator("#txt2img_edit_style_close").click()
    page.locator("#txt2img_styles_dialog").wait_for(state="hidden")


def test_a_checkpoint_card_click_loads_that_checkpoint(page, server):
    before = server.ctx.settings.sd_model_checkpoint
    page.locator("#txt2img_extra_tabs button[role=tab]", has_text="Checkpoints").click()
    cards = page.locator("#txt2img_checkpoints_cards button")
    cards.filter(has_text=re.compile(r"(^\s*)sd1-inpaint(\s*$)")).click()  # not sd1-inpaint-ckpt
    deadline = time.time() + TIMEOUT_MS / 1000
    while not (server.ctx.models.current and server.ctx.models.current.checkpoint.name == "sd1-inpaint.safetensors"):
        assert time.time() < deadline, "the card did not load sd1-inpaint"
        time.sleep(0.2)
    page.wait_for_function(
        "() => document.querySelector('#setting_sd_model_checkpoint input').value.startsWith('sd1-inpaint.safetensors')"
    )
    server.ctx.update_settings({"sd_model_checkpoint": before})  # as the other tests expect


def test_the_card_metadata_editor_saves_the_json_beside_the_lora(page, server, tiny_models_dir):
    from tests.support.tiny_loras import write_tiny_lora

    target = server.data_dir / "models" / "Lora" / "quill.safetensors"
    lora = write_tiny_lora(tiny_models_dir / "sd1.safetensors", target)
    lora.with_suffix(".json").write_text(json.dumps({"activation text": "quill lines", "sd version": "SD1"}))
    page.locator("#txt2img_extra_tabs button[role=tab]", has_text="Lora").click()
    page.locator("#txt2img_lora_extra_refresh").click()
    page.locator("#txt2img_lora_edit_user_metadata").get_by_text("Edit metadata").click()
    name = page.locator("#txt2img_lora_edit_user_metadata_name input")
    name.click()  # the list is read again when it opens: the new file is there
    page.get_by_role("option", name="quill").click()
    activation = page.locator("#txt2img_lora_edit_user_metadata_activation_text textarea")
    page.wait_for_function(
        "() => document.querySelector('#txt2img_lora_edit_user_metadata_activation_text textarea').value"
        " == 'quill lines'"
    )
    activation.fill("quill strokes")
    page.locator("#txt2img_lora_edit_user_metadata_notes textarea").fill("made in the browser test")
    page.locator("#txt2img_lora_edit_user_metadata_save").click()
    page.locator("#txt2img_lora_edit_user_metadata_result").filter(has_text="Saved quill.json").wait_for()
    saved = json.loads(lora.with_suffix(".json").read_text(encoding="utf-8"))
    assert saved["activation text"] == "quill strokes" and saved["notes"] == "made in the browser test"
    assert saved["sd version"] == "SD1"  # the keys the editor does not show are kept
