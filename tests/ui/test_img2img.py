import gradio as gr
import pytest
from PIL import Image

from modules.ui.blocks import create_ui
from modules.ui.img2img import editor_mask, init_inputs, request_values


def layer_with_dot(size=(8, 8), at=(2, 3)):
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.putpixel(at, (255, 255, 255, 255))
    return layer


def test_editor_mask_is_the_union_of_layer_alphas():
    bg = Image.new("RGB", (8, 8), "red")
    mask = editor_mask({"background": bg, "layers": [layer_with_dot(at=(2, 3)), layer_with_dot(at=(6, 1))]})
    assert mask.mode == "L" and mask.getpixel((2, 3)) == 255 and mask.getpixel((6, 1)) == 255
    assert mask.getpixel((0, 0)) == 0
    assert editor_mask({"background": bg, "layers": []}) is None
    assert editor_mask(None) is None


def test_init_inputs_per_sub_tab():
    img = Image.new("RGB", (8, 8))
    assert init_inputs({"img2img_mode": "img2img", "init_image": img})["init_images"][0].size == (8, 8)
    editor = {"background": img, "layers": [layer_with_dot()]}
    got = init_inputs({"img2img_mode": "inpaint", "inpaint_editor": editor})
    assert got["mask"].getpixel((2, 3)) == 255
    with pytest.raises(gr.Error, match="Upload an image"):
        init_inputs({"img2img_mode": "img2img", "init_image": None})
    with pytest.raises(gr.Error, match="mask is empty"):
        init_inputs({"img2img_mode": "inpaint", "inpaint_editor": {"background": img, "layers": []}})


def test_request_values_mask_options():
    img = Image.new("RGB", (8, 8))
    values = request_values(
        {"init_image": img, "mask_blur": 6, "mask_mode": 1, "inpaint_area": 1, "inpaint_full_res_padding": 24}
    )
    assert (values["mask_blur_x"], values["mask_blur_y"], values["inpainting_mask_invert"]) == (6, 6, 1)
    assert (values["inpaint_full_res"], values["inpaint_full_res_padding"]) == (True, 24)


def test_img2img_tab_ids(shared_empty_ctx):
    blocks = create_ui(shared_empty_ctx)
    ids = {c.get("props", {}).get("elem_id") for c in blocks.config["components"]}
    expected = {
        "img2img_prompt",
        "img2img_neg_prompt",
        "img2img_generate",
        "img2img_interrupt",
        "img2img_skip",
        "img2img_image",
        "img2maskimg",
        "mode_img2img",
        "resize_mode",
        "img2img_denoising_strength",
        "img2img_steps",
        "img2img_sampling",
        "img2img_seed",
        "img2img_gallery",
        "html_info_img2img",
        "generation_info_img2img",
        "img2img_mask_blur",
        "img2img_mask_mode",
    }
    assert expected <= ids
