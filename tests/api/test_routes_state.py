"""Options, model switching, listings, model actions, auth and bad input, over real HTTP against a live server."""

import json
import shutil

import pytest
import requests
import torch

from tests.api.conftest import decode_image, info_of

pytestmark = pytest.mark.slow  # drives a real server

LIST_ENDPOINTS = {
    "sd-vae": list,
    "upscalers": list,
    "latent-upscale-modes": list,
    "prompt-styles": list,
    "loras": list,
    "hypernetworks": list,
    "face-restorers": list,
    "realesrgan-models": list,
    "script-info": list,
    "extensions": list,
    "embeddings": dict,
    "scripts": dict,
    "memory": dict,
    "cmd-flags": dict,
    "options": dict,
    "progress": dict,
    "sd-models": list,
    "samplers": list,
    "schedulers": list,
}


def test_options_write_like_a1111_test_utils(server):
    before = server.get("options").json()
    assert "send_seed" in before and before["sd_model_checkpoint"].startswith("sd1.safetensors")
    flipped = not before["send_seed"]
    assert server.post("options", {"send_seed": flipped}).json() is None
    assert server.get("options").json()["send_seed"] is flipped
    saved = json.loads((server.data_dir / "config.json").read_text())
    assert saved["send_seed"] is flipped
    assert server.post("options", {"send_seed": before["send_seed"]}).status_code == 200
    assert server.get("options").json()["send_seed"] is before["send_seed"]


def test_options_full_round_trip_is_accepted(server):
    server.txt2img()  # the model is loaded (and hashed), so the title is final
    options = server.get("options").json()
    assert server.post("options", options).status_code == 200
    assert server.get("options").json() == options


def test_options_unknown_ignored_and_invalid_keys(server):
    bad = server.post("options", {"no_such_option": 1, "send_seed": False})
    assert bad.status_code == 422 and "no_such_option" in bad.json()["detail"]
    assert server.get("options").json()["send_seed"] is True  # nothing was changed
    assert server.post("options", {"show_progressbar": False, "face_restoration": True}).status_code == 200
    invalid = server.post("options", {"jpeg_quality": 1000})
    assert invalid.status_code == 422 and "jpeg_quality" in invalid.json()["detail"]
    missing = server.post("options", {"sd_model_checkpoint": "no-such-model"})
    assert missing.status_code == 404 and "no-such-model" in missing.json()["detail"]


@pytest.mark.parametrize("alias", ["sd2v", "sd2v.safetensors", "title", "hash"])
def test_model_switch_via_options_accepts_a1111_aliases(server, alias):
    models = {m["model_name"]: m for m in server.get("sd-models").json()}
    server.txt2img(override_settings={"sd_model_checkpoint": "sd2v"})  # loads (and so hashes) sd2v
    models = {m["model_name"]: m for m in server.get("sd-models").json()}
    target = models["sd2v"]
    query = {"title": target["title"], "hash": target["hash"]}.get(alias, alias)
    try:
        assert server.post("options", {"sd_model_checkpoint": query}).status_code == 200
        options = server.get("options").json()
        assert options["sd_model_checkpoint"] == target["title"] and options["sd_checkpoint_hash"] == target["sha256"]
        assert info_of(server.txt2img())["sd_model_name"] == "sd2v"
    finally:
        assert server.post("options", {"sd_model_checkpoint": "sd1.safetensors"}).status_code == 200


@pytest.mark.parametrize(("path", "kind"), sorted(LIST_ENDPOINTS.items()))
def test_get_endpoints_answer_with_their_shape(server, path, kind):
    response = server.get(path)
    assert response.status_code == 200 and isinstance(response.json(), kind)


def test_listing_contents(server):
    models = server.get("sd-models").json()
    names = {m["model_name"] for m in models}
    assert {"sd1", "sd2v", "sd1-inpaint", "sdxl", "sd1-ckpt"} <= names
    sd1 = next(m for m in models if m["model_name"] == "sd1")
    assert sd1["title"] == f"sd1.safetensors [{sd1['hash']}]" and sd1["sha256"].startswith(sd1["hash"])
    assert sd1["filename"].endswith("sd1.safetensors") and sd1["config"].endswith("sd1.yaml")
    samplers = {s["name"]: s for s in server.get("samplers").json()}
    assert "k_euler_a" in samplers["Euler a"]["aliases"] and "Euler" in samplers
    assert samplers["DPM fast"]["aliases"] == ["k_dpm_fast"] and samplers["DPM adaptive"]["aliases"] == ["k_dpm_ad"]
    assert samplers["Restart"]["options"] == {"scheduler": "karras", "second_order": "True"}
    schedulers = {s["name"]: s for s in server.get("schedulers").json()}
    assert schedulers["automatic"]["label"] == "Automatic" and schedulers["karras"]["label"] == "Karras"
    assert server.get("scripts").json() == {"txt2img": [], "img2img": ["poor man's outpainting", "outpainting mk2"]}
    assert server.get("embeddings").json() == {"loaded": {}, "skipped": {}}
    memory = server.get("memory").json()
    assert memory["ram"]["total"] >= memory["ram"]["used"] > 0 and "error" in memory["cuda"]
    flags = server.get("cmd-flags").json()
    assert flags["api"] is True and flags["nowebui"] is True and flags["data_dir"] == str(server.data_dir)


def test_refresh_checkpoints_finds_a_new_file(server, tiny_models_dir):
    folder = server.data_dir / "models" / "Stable-diffusion" / "sub"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_models_dir / "sd1.safetensors", folder / "copied.safetensors")
    shutil.copy(tiny_models_dir / "sd1.yaml", folder / "copied.yaml")
    assert server.post("refresh-checkpoints").json() is None
    titles = [m["title"] for m in server.get("sd-models").json()]
    assert "sub/copied.safetensors" in titles
    body = server.txt2img(override_settings={"sd_model_checkpoint": "sub/copied.safetensors"})
    assert info_of(body)["sd_model_name"] == "copied"
    for path in ("refresh-vae", "refresh-embeddings", "refresh-loras"):
        assert server.post(path).status_code == 200


def test_unload_and_reload_checkpoint(server):
    assert server.post("unload-checkpoint").json() == {}
    assert "sd_checkpoint_hash" not in server.get("options").json()
    assert server.post("reload-checkpoint").json() == {}
    assert server.get("options").json()["sd_checkpoint_hash"]
    assert info_of(server.txt2img())["sd_model_name"] == "sd1"


def test_server_stop_routes_need_the_flag(server):
    for path in ("server-kill", "server-restart", "server-stop"):
        assert server.post(path).status_code == 404


def test_no_auth_needed_without_api_auth(server):
    assert server.get("options").status_code == 200


def test_api_auth(auth_server):
    url = f"{auth_server.api}/sd-models"
    anonymous = requests.get(url, timeout=30)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Basic"
    assert requests.get(url, auth=("alice", "wrong"), timeout=30).status_code == 401
    assert requests.get(url, auth=("mallory", "secret"), timeout=30).status_code == 401
    assert requests.get(url, auth=("alice", "secret"), timeout=30).status_code == 200
    assert requests.get(url, auth=("bob", "pa:ss:word"), timeout=30).status_code == 200  # ':' in the password
    assert requests.post(f"{auth_server.api}/txt2img", json={}, timeout=30).status_code == 401
    assert requests.get(f"{auth_server.url}/openapi.json", timeout=30).status_code == 200  # only /sdapi is guarded


# (payload, expected status, words the message must contain). Every one must be a 4xx, never a 500.
BAD_TXT2IMG = [
    ({"width": 60}, 422, ["width", "multiple of 8"]),
    ({"width": 0}, 422, ["width"]),
    ({"height": -64}, 422, ["height"]),
    ({"width": 100000}, 422, ["width", "4096"]),
    ({"width": "wide"}, 422, ["width"]),
    ({"steps": 0}, 422, ["steps", "between 1"]),
    ({"steps": 100000}, 422, ["steps"]),
    ({"steps": "many"}, 422, ["steps"]),
    ({"batch_size": 0}, 422, ["batch_size"]),
    ({"batch_size": 10000}, 422, ["batch_size"]),
    ({"n_iter": 0}, 422, ["n_iter"]),
    ({"n_iter": 10**6}, 422, ["n_iter"]),
    ({"cfg_scale": -1}, 422, ["cfg_scale"]),
    ({"cfg_scale": "high"}, 422, ["cfg_scale"]),
    ({"subseed_strength": 2}, 422, ["subseed_strength", "1"]),
    ({"denoising_strength": -0.5}, 422, ["denoising_strength"]),
    ({"seed": "lucky"}, 422, ["seed"]),
    ({"sampler_name": "Euler z"}, 422, ["sampler_name", "Euler a", "DPM++ 2M"]),
    ({"sampler_index": "nope"}, 422, ["nope", "valid names"]),
    ({"scheduler": "sometimes"}, 422, ["scheduler", "Karras"]),
    ({"styles": "not-a-list"}, 422, ["styles"]),
    ({"prompt": {"a": 1}}, 422, ["prompt"]),
    ({"override_settings": {"no_such_setting": 1}}, 422, ["no_such_setting"]),
    ({"override_settings": {"jpeg_quality": 0}}, 422, ["jpeg_quality"]),
    ({"override_settings": {"sd_model_checkpoint": "missing-model"}}, 404, ["missing-model"]),
    ({"override_settings": "x"}, 422, ["override_settings"]),
    ({"script_name": "x/y/z plot"}, 422, ["script_name"]),
    ({"enable_hr": True, "hr_upscaler": "ESRGAN_9x"}, 422, ["could not find upscaler", "ESRGAN_9x", "Latent"]),
    ({"enable_hr": True, "hr_scale": -1}, 422, ["hr_scale"]),
    ({"enable_hr": True, "hr_checkpoint_name": "other.safetensors"}, 404, ["other.safetensors"]),
]


def _message(response):
    return json.dumps(response.json())


@pytest.mark.parametrize(("payload", "status", "words"), BAD_TXT2IMG, ids=lambda v: None)
def test_bad_txt2img_input_is_a_clear_4xx(server, payload, status, words):
    response = server.post("txt2img", {"width": 64, "height": 64, "steps": 2, **payload})
    assert response.status_code == status, response.text
    for word in words:
        assert word in _message(response)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"init_images": ["@@@"]}, ["init_images[0]", "base64"]),
        ({"init_images": ["aGVsbG8="]}, ["init_images[0]", "not an image"]),
        ({"init_images": "abc"}, ["init_images"]),
        ({"init_images": [1]}, ["init_images"]),
        ({"init_images": ["http://example.com/x.png"]}, ["URL"]),
    ],
)
def test_bad_img2img_input_is_a_clear_4xx(server, payload, words):
    response = server.post("img2img", {"width": 64, "height": 64, "steps": 2, **payload})
    assert response.status_code == 422
    for word in words:
        assert word in _message(response)


def test_bad_bodies_and_server_still_answers(server):
    assert requests.post(f"{server.api}/txt2img", data="{not json", timeout=30).status_code == 422
    assert server.post("txt2img", [1, 2]).status_code == 422
    assert server.post("png-info", {"image": "@@"}).status_code == 422
    assert server.post("png-info", {}).status_code == 422
    assert server.post("options", ["send_seed"]).status_code == 422
    assert len(server.txt2img()["images"]) == 1


@pytest.mark.parametrize(
    ("sampler", "scheduler", "name"),
    [
        ("k_euler_a", None, "Euler a"),
        ("euler a", "automatic", "Euler a"),
        ("DPM++ 2M Karras", None, "DPM++ 2M"),
        ("dpm++ 2m", "karras", "DPM++ 2M"),
        ("Euler", "Karras", "Euler"),
    ],
)
def test_sampler_aliases_and_case_are_accepted(server, sampler, scheduler, name):
    body = server.txt2img(sampler_name=sampler, scheduler=scheduler, steps=2)
    assert f"Sampler: {name}," in info_of(body)["infotexts"][0]


def test_loras_are_listed_and_a_tag_merges_one(server, tiny_models_dir):
    from tests.support.tiny_loras import write_tiny_lora

    folder = server.data_dir / "models" / "Lora"
    lora = write_tiny_lora(
        tiny_models_dir / "sd1.safetensors", folder / "api_lora.safetensors", metadata={"ss_output_name": "api_lora"}
    )
    (folder / "broken.safetensors").write_bytes(b"garbage")  # listed with the reason, never a failed listing
    assert server.post("refresh-loras").json() is None
    item, broken = server.get("loras").json()
    assert broken["name"] == "broken" and "broken.safetensors: not a safetensors file" in broken["metadata"]["error"]
    assert item["name"] == item["alias"] == "api_lora" and item["path"] == str(lora)
    assert item["metadata"] == {"ss_output_name": "api_lora"}
    plain = info_of(server.txt2img(prompt="a cat", seed=3))
    tagged = server.txt2img(prompt="a cat <lora:api_lora:0.5>", seed=3)
    assert 'Lora hashes: "api_lora: ' in info_of(tagged)["infotexts"][0]
    assert "<lora:api_lora:0.5>" in info_of(tagged)["prompt"] and "Lora hashes" not in plain["infotexts"][0]
    response = server.post("txt2img", {"prompt": "a cat <lora:missing:1>", "width": 64, "height": 64, "steps": 2})
    assert response.status_code == 422 and "LoRA 'missing' not found" in response.text and "api_lora" in response.text
    assert len(server.txt2img()["images"]) == 1


def test_embeddings_are_listed_for_the_loaded_model_and_named_in_the_infotext(server):
    from safetensors.torch import save_file

    assert info_of(server.txt2img())["sd_model_name"] == "sd1"  # the tiny SD1 is loaded
    width = server.ctx.models.current.components.text_encoder.token_embedding.weight.shape[1]
    folder = server.data_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    save_file({"emb_params": torch.randn(3, width)}, str(folder / "grainy.safetensors"))
    save_file({"emb_params": torch.randn(2, width + 8)}, str(folder / "other_model.safetensors"))
    assert server.post("refresh-embeddings").status_code == 200
    listing = server.get("embeddings").json()
    assert listing["loaded"]["grainy"]["vectors"] == 3 and listing["loaded"]["grainy"]["shape"] == width
    assert listing["skipped"]["other_model"]["shape"] == width + 8
    body = server.txt2img(prompt="a photo, grainy", negative_prompt="other_model")
    infotext = info_of(body)["infotexts"][0]
    assert 'TI hashes: "grainy: ' in infotext and "other_model:" not in infotext


def test_sd_vae_lists_the_vae_folder_and_a_request_can_choose_a_file(server, tiny_models_dir):
    from safetensors.torch import load_file, save_file

    prefix = "first_stage_model."
    tensors = load_file(str(tiny_models_dir / "sd1.safetensors"))
    vae = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    folder = server.data_dir / "models" / "VAE"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(vae, str(folder / "same.vae.safetensors"))
    assert server.post("refresh-vae").status_code == 200
    assert server.get("sd-vae").json() == [
        {"model_name": "same.vae.safetensors", "filename": str(folder / "same.vae.safetensors")}
    ]
    plain = server.txt2img(seed=5)
    chosen = server.txt2img(seed=5, override_settings={"sd_vae": "same.vae.safetensors"})
    assert "VAE: same.vae.safetensors" in info_of(chosen)["infotexts"][0]
    same = [decode_image(b).tobytes() for b in (chosen["images"][0], plain["images"][0])]
    assert same[0] == same[1]  # the checkpoint's own VAE weights from a file: the same pixels
    bad = server.post("txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                  "override_settings": {"sd_vae": "gone.pt"}})  # fmt: skip
    assert bad.status_code == 422 and "same.vae.safetensors" in bad.text


def test_prompt_styles_are_listed_and_applied_to_the_prompts(server):
    (server.data_dir / "styles.csv").write_text(
        'name,prompt,negative_prompt\nNoir,"film noir, {prompt}",colour\n', encoding="utf-8"
    )
    assert server.get("prompt-styles").json() == [
        {"name": "Noir", "prompt": "film noir, {prompt}", "negative_prompt": "colour"}
    ]
    body = server.txt2img(prompt="a detective", negative_prompt="blur", styles=["Noir"])
    info = info_of(body)
    assert info["prompt"] == "film noir, a detective" and info["negative_prompt"] == "blur, colour"
    assert info["infotexts"][0].startswith("film noir, a detective\nNegative prompt: blur, colour\n")
    assert info["styles"] == ["Noir"]
    bad = server.post("txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64, "styles": ["Gone"]})
    assert bad.status_code == 422 and "'Gone' not found" in bad.text and "Noir" in bad.text
