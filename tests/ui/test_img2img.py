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


def test_editor_mask_binarises_soft_alpha_and_resizes_layers():
    bg = Image.new("RGB", (8, 8))
    soft = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    soft.putpixel((4, 4), (255, 255, 255, 10))
    small = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    small.putpixel((0, 0), (255, 0, 0, 255))  # scaled ×2 onto the 8×8 background
    mask = editor_mask({"background": bg, "layers": [soft, small]})
    assert set(mask.getdata()) == {0, 255}
    assert mask.getpixel((4, 4)) == 255 and mask.getpixel((1, 1)) == 255 and mask.getpixel((7, 7)) == 0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_upload_mask_white_repaints_for_each_upload_mode(mode):
    from modules.ui.img2img import upload_mask

    src = Image.new(mode, (4, 4), 0 if mode != "RGB" else (0, 0, 0))
    src.putpixel((1, 2), {"RGB": (255, 255, 255), "RGBA": (255, 255, 255, 255), "L": 255}[mode])
    mask = upload_mask(src, (4, 4))
    assert mask.mode == "L" and mask.getpixel((1, 2)) == 255 and mask.getpixel((3, 0)) == 0
    assert upload_mask(src, (8, 8)).size == (8, 8)


def test_upload_mask_transparent_rgba_keeps_the_original():
    from modules.ui.img2img import upload_mask

    clear = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert upload_mask(clear, (4, 4)).getextrema() == (0, 0)


def test_sketch_and_upload_sub_tabs():
    base = Image.new("RGB", (8, 8), "blue")
    painted = Image.new("RGB", (8, 8), "green")
    sketch = init_inputs(
        {"img2img_mode": "sketch", "sketch_editor": {"background": base, "layers": [], "composite": painted}}
    )
    assert sketch["mask"] is None and sketch["init_images"][0].getpixel((0, 0)) == (0, 128, 0)
    editor = {"background": base, "layers": [layer_with_dot()], "composite": painted}
    got = init_inputs({"img2img_mode": "inpaint_sketch", "inpaint_sketch_editor": editor})
    assert got["init_images"][0].getpixel((0, 0)) == (0, 128, 0) and got["mask"].getpixel((2, 3)) == 255
    mask = Image.new("L", (8, 8), 0)
    mask.putpixel((5, 5), 255)
    got = init_inputs({"img2img_mode": "inpaint_upload", "inpaint_upload_image": base, "inpaint_upload_mask": mask})
    assert got["mask"].getpixel((5, 5)) == 255 and got["init_images"][0].getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(gr.Error, match="all black"):
        init_inputs(
            {
                "img2img_mode": "inpaint_upload",
                "inpaint_upload_image": base,
                "inpaint_upload_mask": Image.new("L", (8, 8)),
            }
        )
    with pytest.raises(gr.Error, match="needs both"):
        init_inputs({"img2img_mode": "inpaint_upload", "inpaint_upload_image": base, "inpaint_upload_mask": None})


def test_resize_by_and_masked_content_to_request():
    from modules.ui.forms import to_request

    img = Image.new("RGB", (100, 60))
    values = {
        "prompt": "p",
        "steps": 10,
        "width": 512,
        "height": 512,
        "denoising_strength": 0.4,
        "resize_mode": 2,
        "init_image": img,
        "resize_by": "by",
        "img2img_scale": 2.0,
        "inpainting_fill": 2,
        "inpaint_full_res_padding": 16,
    }
    import dataclasses

    request = dataclasses.replace(to_request(values), **request_values(values))
    assert (request.width, request.height) == (200, 120)
    assert request.denoising_strength == 0.4 and request.resize_mode == 2
    assert request.inpainting_fill == 2 and request.inpaint_full_res_padding == 16
    assert request.init_images[0].size == (100, 60)


def _fake_job_ctx(tmp_path):
    """A stand-in context whose submit() 'generates' by inverting the init image (records each request)."""
    from types import SimpleNamespace

    from PIL import ImageOps

    from modules.engine.images import encode_image

    seen = []

    def submit(request, save=True):
        seen.append(request)
        out = ImageOps.invert(request.init_images[0])
        result = SimpleNamespace(
            images=[out], infotexts=[f"{request.prompt}\nSteps: {request.steps}"], interrupted=False
        )
        return SimpleNamespace(done=True, wait=lambda: SimpleNamespace(result=result))

    ctx = SimpleNamespace(
        submit=submit,
        seen=seen,
        sampler_names=lambda: ["Euler"],
        schedule_labels=lambda: ["Automatic"],
        encode_image=encode_image,
        jobs=SimpleNamespace(pending=[], current=None),
        read_image_info=lambda image: (image.info.get("parameters"), {}),
    )
    return ctx


def test_batch_processes_every_image_and_never_overwrites(tmp_path, shared_empty_ctx):
    from types import SimpleNamespace

    from modules.ui.img2img_batch import run_batch

    src, out, masks = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
    for d in (src, out, masks):
        d.mkdir()
    Image.new("RGB", (16, 16), "white").save(src / "a.png")
    Image.new("RGB", (16, 16), "black").save(src / "b.jpg")
    (src / "notes.txt").write_text("not an image")
    Image.new("L", (16, 16), 255).save(masks / "b.png")
    (out / "a.png").write_bytes(b"existing")
    ctx = _fake_job_ctx(tmp_path)
    ctx.settings = shared_empty_ctx.settings
    ctx.infotext_fields = shared_empty_ctx.infotext_fields
    t = SimpleNamespace(
        progress="progress", gallery="gallery", html_info="html", generation_info="info", selected_index="idx"
    )
    values = {
        "prompt": "cat",
        "steps": 5,
        "batch_input_dir": str(src),
        "batch_output_dir": str(out),
        "batch_mask_dir": str(masks),
    }
    final = list(run_batch(ctx, t, values))[-1]
    assert len(final["gallery"]) == 2 and "Processed 2 image(s)" in final["html"]
    assert (out / "a.png").read_bytes() == b"existing"
    assert Image.open(out / "a-1.png").getpixel((0, 0)) == (0, 0, 0)
    assert Image.open(out / "b.png").info["parameters"] == "cat\nSteps: 5"
    assert ctx.seen[0].mask is None and ctx.seen[1].mask.getpixel((0, 0)) == 255


def test_batch_png_info_takes_each_images_parameters(tmp_path, shared_empty_ctx):
    from types import SimpleNamespace

    from PIL import PngImagePlugin

    from modules.ui.img2img_batch import run_batch

    src = tmp_path / "in"
    src.mkdir()
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a red fox\nSteps: 7, Sampler: Euler, CFG scale: 5, Seed: 42, Size: 64x64")
    Image.new("RGB", (16, 16)).save(src / "x.png", pnginfo=meta)
    ctx = _fake_job_ctx(tmp_path)
    ctx.settings = shared_empty_ctx.settings
    ctx.infotext_fields = shared_empty_ctx.infotext_fields
    t = SimpleNamespace(progress="p", gallery="g", html_info="h", generation_info="i", selected_index="s")
    values = {
        "prompt": "form",
        "steps": 20,
        "batch_input_dir": str(src),
        "batch_output_dir": str(tmp_path / "o"),
        "batch_png_info": True,
    }
    list(run_batch(ctx, t, values))
    assert (ctx.seen[0].prompt, ctx.seen[0].steps, ctx.seen[0].seed) == ("a red fox", 7, 42)


@pytest.mark.parametrize(
    ("folder", "message"), [("", "enter a folder"), ("/no/such/dir", "does not exist"), ("EMPTY", "holds no images")]
)
def test_batch_folder_errors_are_readable(tmp_path, folder, message):
    from modules.ui.img2img_batch import list_images

    if folder == "EMPTY":
        folder = str(tmp_path)
    with pytest.raises(gr.Error, match=message):
        list_images(folder, "Input directory")


def test_inpaint_controls_only_on_inpaint_sub_tabs(shared_empty_ctx):
    blocks = create_ui(shared_empty_ctx)
    by_id = {c.get("props", {}).get("elem_id"): c for c in blocks.config["components"]}
    assert by_id["img2img_inpaint_controls"]["props"]["visible"] is False
    fill = by_id["img2img_inpainting_fill"]["props"]
    assert [c[0] for c in fill["choices"]] == ["fill", "original", "latent noise", "latent nothing"]
    assert fill["value"] == "original"
    labels = [c["props"]["label"] for c in blocks.config["components"] if c["type"] == "tabitem"]
    for label in (
        "img2img",
        "Sketch",
        "Inpaint",
        "Inpaint sketch",
        "Inpaint upload",
        "Batch",
        "Resize to",
        "Resize by",
    ):
        assert label in labels
