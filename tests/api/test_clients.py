"""Third-party clients against the live server: the ``webuiapi`` client (PyPI) and the ``sd-parsers`` reader."""

import threading
import time

import pytest

from tests.api.conftest import decode_image, info_of

webuiapi = pytest.importorskip("webuiapi")
sd_parsers = pytest.importorskip("sd_parsers")
pytestmark = pytest.mark.slow  # drives a real server


def client_for(server, **kw):
    host, port = server.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=3, **kw)


def test_webuiapi_txt2img(server):
    api = client_for(server)
    result = api.txt2img(prompt="a red apple", negative_prompt="blurry", seed=7, width=64, height=64, batch_size=2)
    assert len(result.images) == 2 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [7, 8] and result.info["sampler_name"] == "Euler a"
    assert result.image.info["parameters"] == result.info["infotexts"][0]
    assert result.parameters["prompt"] == "a red apple" and result.parameters["steps"] == 3


def test_webuiapi_options_models_and_lists(server):
    api = client_for(server)
    options = api.get_options()
    flipped = not options["send_seed"]
    api.set_options({"send_seed": flipped})
    assert api.get_options()["send_seed"] is flipped
    api.set_options({"send_seed": options["send_seed"]})
    names = api.util_get_model_names()
    sd2v_title = next(n for n in names if n.startswith("sd2v.safetensors"))
    try:
        api.util_set_model(sd2v_title)
        # Titles gain "[hash]" once the file is hashed at load time (A1111's behaviour too).
        assert api.util_get_current_model().startswith(sd2v_title)
        assert api.txt2img(prompt="x", width=64, height=64).info["sd_model_name"] == "sd2v"
    finally:
        api.set_options({"sd_model_checkpoint": "sd1.safetensors"})
    assert "Euler a" in api.util_get_sampler_names() and "karras" in api.util_get_scheduler_names()
    assert api.get_cmd_flags()["api"] is True and api.get_memory()["ram"]["total"] > 0
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert api.get_latent_upscale_modes()[0]["name"] == "Latent"
    for call in (
        api.get_sd_vae,
        api.get_loras,
        api.get_hypernetworks,
        api.get_face_restorers,
        api.get_realesrgan_models,
        api.get_prompt_styles,
    ):
        assert call() == []
    assert api.get_scripts() == {"txt2img": [], "img2img": ["poor man's outpainting", "outpainting mk2"]}


def test_webuiapi_png_info_and_wait_for_ready(server):
    api = client_for(server)
    result = api.txt2img(prompt="info please", seed=11, width=64, height=64)
    info = api.png_info(result.image)
    assert info.info == result.info["infotexts"][0]  # webuiapi keeps the non-JSON info as the raw string
    assert info.json["parameters"]["Seed"] == "11"
    api.util_wait_for_ready(check_interval=0.1)  # progress 0 and job_count 0 when idle


def test_webuiapi_progress_and_interrupt(server):
    api = client_for(server)
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", api.txt2img(width=256, height=256, steps=400)))
    worker.start()
    deadline = time.monotonic() + 60
    while api.get_progress()["state"]["sampling_step"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.get_progress()["progress"] > 0
    api.interrupt()
    worker.join(60)
    assert len(out["r"].images) == 1


def test_webuiapi_raises_on_errors(server):
    api = client_for(server)
    with pytest.raises(RuntimeError) as info:
        api.txt2img(prompt="x", width=63, height=64)
    assert info.value.args[0] == 422 and "width" in info.value.args[1]


def test_webuiapi_with_auth(auth_server):
    host, port = auth_server.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="bob", password="pa:ss:word", steps=2)
    assert api.txt2img(prompt="auth", width=64, height=64, seed=3).info["seed"] == 3
    anonymous = webuiapi.WebUIApi(host=host, port=int(port))
    with pytest.raises(RuntimeError) as info:
        anonymous.txt2img(prompt="x", width=64, height=64)
    assert info.value.args[0] == 401


def test_sd_parsers_reads_the_api_infotext(server):
    body = server.txt2img(prompt="a (blue:1.2) house", negative_prompt="ugly", seed=123, steps=4, cfg_scale=6.5)
    image = decode_image(body["images"][0])
    prompt_info = sd_parsers.ParserManager().parse(image)
    assert prompt_info is not None
    assert prompt_info.generator.name == "AUTOMATIC1111"
    assert prompt_info.full_prompt == "a (blue:1.2) house" and prompt_info.full_negative_prompt == "ugly"
    sampler = next(iter(prompt_info.samplers))
    assert sampler.name == "Euler"
    assert (
        str(sampler.parameters["steps"]),
        str(sampler.parameters["cfg_scale"]),
        str(sampler.parameters["seed"]),
    ) == ("4", "6.5", "123")
    model = next(iter(prompt_info.models))
    assert model.name == "sd1" and model.hash == info_of(body)["sd_model_hash"]
