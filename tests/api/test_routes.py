"""txt2img / img2img / png-info over real HTTP against a live server on the tiny checkpoints."""

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import decode_image, info_of

pytestmark = pytest.mark.slow  # drives a real server

INFO_KEYS = {
    "prompt",
    "all_prompts",
    "negative_prompt",
    "all_negative_prompts",
    "seed",
    "all_seeds",
    "subseed",
    "all_subseeds",
    "subseed_strength",
    "width",
    "height",
    "sampler_name",
    "cfg_scale",
    "steps",
    "batch_size",
    "restore_faces",
    "face_restoration_model",
    "sd_model_name",
    "sd_model_hash",
    "sd_vae_name",
    "sd_vae_hash",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "denoising_strength",
    "extra_generation_params",
    "index_of_first_image",
    "infotexts",
    "styles",
    "job_timestamp",
    "clip_skip",
    "is_using_inpainting_conditioning",
    "version",
}

# A1111's own test/test_txt2img.py base payload (legacy keys included), at the tiny size.
A1111_BASE = {
    "batch_size": 1,
    "cfg_scale": 7,
    "denoising_strength": 0,
    "enable_hr": False,
    "eta": 0,
    "firstphase_height": 0,
    "firstphase_width": 0,
    "height": 64,
    "n_iter": 1,
    "negative_prompt": "",
    "prompt": "example prompt",
    "restore_faces": False,
    "s_churn": 0,
    "s_noise": 1,
    "s_tmax": 0,
    "s_tmin": 0,
    "sampler_index": "Euler a",
    "seed": -1,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "steps": 3,
    "styles": [],
    "subseed": -1,
    "subseed_strength": 0,
    "tiling": False,
    "width": 64,
}


def pixels(b64):
    return np.asarray(decode_image(b64).convert("RGB"), dtype=np.int16)


def test_txt2img_response_schema_and_embedded_infotext(server):
    body = server.txt2img(**A1111_BASE)
    assert set(body) == {"images", "parameters", "info"}
    info = info_of(body)
    assert set(info) >= INFO_KEYS
    assert len(body["images"]) == 1 and len(info["infotexts"]) == 1 and info["index_of_first_image"] == 0
    image = decode_image(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    assert pixels(body["images"][0]).std() > 0  # a real image, not a constant one
    assert image.info["parameters"] == info["infotexts"][0]
    text = info["infotexts"][0]
    assert text.startswith("example prompt\nSteps: 3, Sampler: Euler a, ")
    assert f"Seed: {info['seed']}," in text and "Size: 64x64" in text and "Model: sd1" in text
    assert 0 <= info["seed"] < 4294967294 and info["all_seeds"] == [info["seed"]]
    assert (info["sd_model_name"], info["width"], info["steps"], info["sampler_name"]) == ("sd1", 64, 3, "Euler a")
    assert len(info["sd_model_hash"]) == 10
    params = body["parameters"]
    assert params["sampler_name"] == "Euler a" and params["steps"] == 3 and params["save_images"] is False


def test_api_defaults_steps_50_euler_and_nothing_saved(server):
    body = server.post("txt2img", {"prompt": "defaults", "width": 64, "height": 64}).json()
    info = info_of(body)
    assert pixels(body["images"][0]).std() > 0
    assert (info["steps"], info["sampler_name"], info["cfg_scale"], info["batch_size"]) == (50, "Euler", 7.0, 1)
    assert "Steps: 50, Sampler: Euler, " in info["infotexts"][0]
    assert not list((server.data_dir / "outputs").rglob("*.png"))


def test_same_seed_same_image_and_batch_seeds(server):
    one = server.txt2img(seed=1234)
    again = server.txt2img(seed=1234)
    assert np.array_equal(pixels(one["images"][0]), pixels(again["images"][0]))
    other = server.txt2img(seed=99)
    assert not np.array_equal(pixels(one["images"][0]), pixels(other["images"][0]))
    batch = server.txt2img(seed=1234, batch_size=2)
    info = info_of(batch)
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234
    assert "Seed: 1235," in info["infotexts"][1]
    assert np.abs(pixels(batch["images"][0]) - pixels(one["images"][0])).max() <= 2
    single = server.txt2img(seed=1235)
    assert np.abs(pixels(batch["images"][1]) - pixels(single["images"][0])).max() <= 2
    iters = info_of(server.txt2img(seed=10, n_iter=2))
    assert iters["all_seeds"] == [10, 11]


def test_save_images_writes_outputs_and_returns_grid_first(server):
    body = server.txt2img(seed=5, batch_size=2, save_images=True)
    info = info_of(body)
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    grid = decode_image(body["images"][0])
    assert grid.size != (64, 64) and decode_image(body["images"][1]).size == (64, 64)
    samples = sorted((server.data_dir / "outputs" / "txt2img-images").rglob("*.png"))
    assert [p.name.split("-", 1)[1] for p in samples[-2:]] == ["5.png", "6.png"]
    assert Image.open(samples[-1]).info["parameters"] == info["infotexts"][1]
    assert list((server.data_dir / "outputs" / "txt2img-grids").rglob("grid-*.png"))
    no_grid = server.txt2img(seed=5, batch_size=2)  # save_images false: no grid, A1111's rule
    assert len(no_grid["images"]) == 2 and info_of(no_grid)["index_of_first_image"] == 0


def test_send_images_false(server):
    body = server.txt2img(send_images=False)
    assert body["images"] == [] and len(info_of(body)["infotexts"]) == 1


def test_jpeg_output_via_override_carries_exif_infotext_and_does_not_leak(server):
    body = server.txt2img(seed=3, override_settings={"samples_format": "jpg"})
    image = decode_image(body["images"][0])
    assert image.format == "JPEG"
    png_info = server.post("png-info", {"image": body["images"][0]}).json()
    assert png_info["info"] == info_of(body)["infotexts"][0]
    assert server.get("options").json()["samples_format"] == "png"
    assert decode_image(server.txt2img()["images"][0]).format == "PNG"


def test_override_checkpoint_applies_to_one_request_only(server):
    body = server.txt2img(override_settings={"sd_model_checkpoint": "sd2v"})
    assert info_of(body)["sd_model_name"] == "sd2v" and "Model: sd2v" in info_of(body)["infotexts"][0]
    assert info_of(server.txt2img())["sd_model_name"] == "sd1"
    assert server.get("options").json()["sd_model_checkpoint"].startswith("sd1.safetensors")


def test_override_settings_restore_afterwards_false_keeps_them(server):
    try:
        body = server.txt2img(
            override_settings={"CLIP_stop_at_last_layers": 2}, override_settings_restore_afterwards=False
        )
        assert "Clip skip: 2" in info_of(body)["infotexts"][0]
        assert server.get("options").json()["CLIP_stop_at_last_layers"] == 2
        assert "Clip skip: 2" in info_of(server.txt2img())["infotexts"][0]
    finally:
        assert server.post("options", {"CLIP_stop_at_last_layers": 1}).status_code == 200


def test_infotext_field_fills_unset_fields(server):
    first = info_of(server.txt2img(prompt="from infotext", seed=77, steps=2, cfg_scale=5))["infotexts"][0]
    body = server.post("txt2img", {"infotext": first, "width": 64, "height": 64}).json()
    info = info_of(body)
    assert (info["prompt"], info["seed"], info["steps"], info["cfg_scale"]) == ("from infotext", 77, 2, 5.0)


def test_png_info_reads_what_txt2img_wrote(server):
    body = server.txt2img(prompt="read me back", negative_prompt="blurry", seed=42)
    info = info_of(body)
    result = server.post("png-info", {"image": "data:image/png;base64," + body["images"][0]}).json()
    assert result["info"] == info["infotexts"][0]
    parsed = result["parameters"]
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Seed"], parsed["Steps"]) == (
        "read me back",
        "blurry",
        "42",
        "3",
    )
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Sampler"]) == ("64", "64", "Euler")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    plain = server.post("png-info", {"image": base64.b64encode(buf.getvalue()).decode()}).json()
    assert plain == {"info": "", "items": {}, "parameters": {}}


def _png_b64(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_img2img_reaches_the_engine(server):
    init = server.txt2img(seed=1)["images"][0]
    payload = {"init_images": [init], "width": 64, "height": 64, "steps": 4, "seed": 5, "denoising_strength": 0.5}
    response = server.post("img2img", payload)
    assert response.status_code == 200, response.text
    image = decode_image(response.json()["images"][0])
    assert image.size == (64, 64) and "Denoising strength: 0.5" in image.info["parameters"]
    assert json.loads(response.json()["info"])["denoising_strength"] == 0.5
    # inpainting, whole picture: a mask over the top-left quarter; pixels far from it come back unchanged
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    fields = {"mask": _png_b64(mask), "mask_blur": 4, "inpaint_full_res": False, "inpainting_fill": 0}
    inpainted = server.post("img2img", {**payload, **fields})
    assert inpainted.status_code == 200, inpainted.text
    result = decode_image(inpainted.json()["images"][0])
    out = np.asarray(result.convert("RGB")).astype(int)
    original = np.asarray(decode_image(init).convert("RGB")).astype(int)
    assert np.abs(out[48:, 48:] - original[48:, 48:]).max() == 0
    assert np.abs(out[:16, :16] - original[:16, :16]).mean() > 0
    assert "Mask blur: 4, Masked content: fill" in result.info["parameters"]
    assert "Inpaint area" not in result.info["parameters"]
    missing = server.post("img2img", {"prompt": "x"})
    assert missing.status_code == 404 and "Init image not found" in missing.json()["detail"]


def test_img2img_inpaint_fields_reach_the_engine(server):
    """A1111's API defaults inpaint "Only masked" with padding 0; invert, padding and latent modes pass through."""
    init = _png_b64(Image.new("RGB", (96, 80), (30, 160, 90)))
    mask = Image.new("L", (96, 80), 0)
    mask.paste(255, (60, 40, 80, 60))
    payload = {
        "init_images": [init],
        "mask": _png_b64(mask),
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 5,
        "denoising_strength": 0.5,
        "inpaint_full_res_padding": 8,
        "inpainting_fill": 3,
        "inpainting_mask_invert": 1,
        "mask_blur_x": 2,
        "mask_blur_y": 2,
    }
    response = server.post("img2img", payload)
    assert response.status_code == 200, response.text
    image = decode_image(response.json()["images"][0])
    assert image.size == (96, 80)  # only masked: pasted back into the full-size original
    text = image.info["parameters"]
    for part in ("Mask blur: 2", "Inpaint area: Only masked", "Masked area padding: 8"):
        assert part in text
    assert "Masked content: latent nothing, Mask mode: Inpaint not masked" in text
    extra = json.loads(response.json()["info"])["extra_generation_params"]
    assert extra["Masked content"] == "latent nothing" and extra["Masked area padding"] == 8


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"init_images": ["!!!not base64!!!"]}, "init_images[0]"),
        ({"init_images": [base64.b64encode(b"hello").decode()]}, "init_images[0]"),
        ({"init_images": [_png_b64(Image.new("RGB", (8, 8)))], "resize_mode": 9}, "resize_mode"),
    ],
)
def test_img2img_bad_init_image_is_a_client_error(server, payload, needle):
    response = server.post("img2img", {**payload, "width": 64, "height": 64, "steps": 2})
    assert 400 <= response.status_code < 500, response.text
    assert needle in response.json()["detail"]


def test_progress_and_interrupt_from_another_thread(server):
    result = {}

    def run():
        start = time.monotonic()
        result["response"] = server.post("txt2img", {"width": 256, "height": 256, "steps": 500, "seed": 8})
        result["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=run)
    worker.start()
    deadline, progress = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        progress = server.get("progress").json()
        if progress["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.05)
    state = progress["state"]
    assert state["sampling_steps"] == 500 and state["job_count"] == 1 and 0 < progress["progress"] < 1
    assert progress["eta_relative"] > 0 and len(state["job_timestamp"]) == 14
    # asking for progress is what makes the worker draw live previews: one comes within the next 10 steps
    while progress["current_image"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
        progress = server.get("progress").json()
    preview = decode_image(progress["current_image"])
    assert preview.format == "PNG" and preview.size == (256 // 8, 256 // 8)  # Approx NN draws as Approx cheap
    skipped = server.get("progress", params={"skip_current_image": "true"})
    assert skipped.status_code == 200 and skipped.json()["current_image"] is None
    assert server.post("interrupt").json() == {}
    worker.join(60)
    response = result["response"]
    assert response.status_code == 200 and len(response.json()["images"]) == 1  # what it had, as A1111 does
    steps_done = int(info_of(response.json())["steps"])
    assert steps_done == 500 and result["seconds"] < 30
    idle = server.get("progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


def test_skip_ends_the_current_batch(server):
    done = {}
    worker = threading.Thread(
        target=lambda: done.setdefault(
            "r", server.post("txt2img", {"width": 128, "height": 128, "steps": 300, "n_iter": 2})
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while server.get("progress").json()["state"]["sampling_step"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.post("skip").json() is None
    time.sleep(0.3)
    server.post("interrupt")
    worker.join(60)
    assert done["r"].status_code == 200 and 1 <= len(done["r"].json()["images"]) <= 2


def test_concurrent_burst_gets_its_own_answers(server):
    seeds = [101, 102, 103, 101, 104, 105, 102, 106]
    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        bodies = list(pool.map(lambda s: server.txt2img(seed=s, steps=2, prompt=f"burst {s}"), seeds))
    by_seed = {}
    for seed, body in zip(seeds, bodies, strict=True):
        info = info_of(body)
        assert info["seed"] == seed and info["prompt"] == f"burst {seed}"
        assert decode_image(body["images"][0]).info["parameters"] == info["infotexts"][0]
        by_seed.setdefault(seed, []).append(pixels(body["images"][0]))
    for images in by_seed.values():
        assert all(np.array_equal(images[0], other) for other in images[1:])


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
        {"negative_prompt": "example negative prompt"},
        {"width": 128, "height": 64},
        {"restore_faces": True},
        {"tiling": True},
        {"n_iter": 2},
        {"batch_size": 2},
        {"sampler_index": "DDIM"},
        {"sampler_index": "PLMS"},
        {"sampler_index": "UniPC"},
    ],
    ids=[
        "complex-prompt",
        "negative",
        "not-square",
        "restore-faces",
        "tiling",
        "n_iter",
        "batch",
        "ddim",
        "plms",
        "unipc",
    ],
)
def test_a1111_upstream_txt2img_payloads(server, extra):
    body = server.txt2img(**{**A1111_BASE, **extra})
    info = info_of(body)
    assert len(body["images"]) == info["batch_size"] * extra.get("n_iter", 1)
    assert decode_image(body["images"][0]).size == (extra.get("width", 64), extra.get("height", 64))
    assert info["sampler_name"] == extra.get("sampler_index", "Euler a")


def test_gzip_and_process_time_header(server):
    response = server.post("txt2img", {"width": 64, "height": 64, "steps": 2}, headers={"Accept-Encoding": "gzip"})
    assert response.headers.get("Content-Encoding") == "gzip" and float(response.headers["X-Process-Time"]) > 0
    assert json.loads(response.content)["images"]
    assert "access-control-allow-origin" not in server.get("options", headers={"Origin": "http://x.test"}).headers


def test_concurrent_overrides_never_leak(server):
    overrides = [{"CLIP_stop_at_last_layers": 2}, None, {"CLIP_stop_at_last_layers": 2}, None, None]
    with ThreadPoolExecutor(max_workers=len(overrides)) as pool:
        bodies = list(pool.map(lambda o: server.txt2img(steps=2, override_settings=o), overrides))
    for override, body in zip(overrides, bodies, strict=True):
        assert ("Clip skip: 2" in info_of(body)["infotexts"][0]) is (override is not None)
    assert server.get("options").json()["CLIP_stop_at_last_layers"] == 1


def test_txt2img_hires_fix_over_http(server):
    payload = {
        **A1111_BASE,
        "seed": 77,
        "enable_hr": True,
        "hr_scale": 2,
        "hr_second_pass_steps": 2,
        "denoising_strength": 0.5,
        "save_images": True,
    }
    body = server.txt2img(**payload)
    image = decode_image(body["images"][0])
    assert image.size == (128, 128) and pixels(body["images"][0]).std() > 0
    text = info_of(body)["infotexts"][0]
    assert "Size: 64x64" in text and "Denoising strength: 0.5" in text
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in text
    assert image.info["parameters"] == text
    saved = list((server.data_dir / "outputs" / "txt2img-images").rglob("*-77.png"))
    assert saved and Image.open(saved[0]).size == (128, 128)
    modes = server.get("latent-upscale-modes").json()
    assert [m["name"] for m in modes][:3] == ["Latent", "Latent (antialiased)", "Latent (bicubic)"]
    # the infotext alone regenerates the same picture, hires pass included
    again = server.post("txt2img", {"infotext": text}).json()
    assert np.array_equal(pixels(again["images"][0]), pixels(body["images"][0]))


def test_txt2img_with_a_refiner_over_http(server):
    body = server.txt2img(
        **{**A1111_BASE, "sampler_index": "Euler", "seed": 12}, refiner_checkpoint="sd2v", refiner_switch_at=0.5
    )
    text = info_of(body)["infotexts"][0]
    assert "Refiner: sd2v [" in text and "Refiner switch at: 0.5" in text
    assert pixels(body["images"][0]).std() > 0
    missing = server.post("txt2img", {**A1111_BASE, "refiner_checkpoint": "no-such-model"})
    assert missing.status_code == 404 and "no-such-model" in missing.text
    ddim = {**A1111_BASE, "sampler_name": "DDIM", "refiner_checkpoint": "sd2v", "refiner_switch_at": 0.5}
    ddim = server.post("txt2img", ddim)
    assert ddim.status_code == 200 and "Refiner: sd2v" in info_of(ddim.json())["infotexts"][0]


def test_sampler_parameters_round_trip_through_the_infotext(server):
    body = server.txt2img(**{**A1111_BASE, "sampler_name": "DDIM", "eta": 0.5, "seed": 5, "steps": 4})
    text = info_of(body)["infotexts"][0]
    assert "Sampler: DDIM" in text and "Eta DDIM: 0.5" in text
    again = server.post("txt2img", {"infotext": text}).json()  # Eta DDIM comes back as the eta_ddim setting
    assert np.array_equal(pixels(again["images"][0]), pixels(body["images"][0]))
    plain = server.post("txt2img", {"infotext": text.replace(", Eta DDIM: 0.5", "")}).json()
    assert not np.array_equal(pixels(plain["images"][0]), pixels(body["images"][0]))


def test_out_of_range_sampler_parameters_are_a_422_and_the_next_request_works(server):
    bad = server.post("txt2img", {**A1111_BASE, "sampler_name": "DDIM", "eta": 5, "s_noise": -1})
    assert bad.status_code == 422
    assert "eta must be between 0 and 1, got 5" in bad.text and "s_noise must be between 0 and 1.1" in bad.text
    options = server.post("options", {"uni_pc_variant": "nope"})
    assert options.status_code == 422 and "uni_pc_variant" in options.text
    ok = server.post("txt2img", {**A1111_BASE, "sampler_name": "UniPC", "steps": 3})
    assert ok.status_code == 200 and "Sampler: UniPC" in info_of(ok.json())["infotexts"][0]


def test_tiling_comes_from_the_request_or_else_the_setting(server):
    def tiled(**fields) -> bool:
        return "Tiling: True" in info_of(server.txt2img(steps=2, **fields))["infotexts"][0]

    assert tiled(tiling=True) and not tiled()
    assert tiled(override_settings={"tiling": True})
    assert not tiled(override_settings={"tiling": True}, tiling=False)  # the request's field wins for its job
    assert server.get("options").json()["tiling"] is False  # nothing kept
    assert tiled(infotext="a wall\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, Tiling: True")
