"""Poor man's outpainting: A1111's argument parsing and canvas geometry, and a real inpainting run over it."""

import numpy as np
import pytest
from PIL import Image

from modules.engine.outpaint import OutpaintArgs, canvas_geometry, expand
from modules.engine.pipeline import generate
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("size", "args", "expected"),
    [
        ((512, 512), OutpaintArgs(), (768, 768, 128, 128, 128, 128)),
        ((500, 300), OutpaintArgs(pixels=64, direction=("left",)), (576, 320, 76, 0, 0, 0)),
        ((512, 512), OutpaintArgs(pixels=100, direction=("right", "down")), (640, 640, 0, 128, 0, 128)),
        ((96, 64), OutpaintArgs(pixels=32, direction=("left", "right")), (192, 64, 48, 48, 0, 0)),
    ],
)
def test_canvas_geometry_as_a1111(size, args, expected):
    assert canvas_geometry(*size, args) == expected


def test_script_args_parse_like_a1111():
    assert OutpaintArgs.from_script_args([]) == OutpaintArgs()
    parsed = OutpaintArgs.from_script_args([64, 8, "latent noise", ["up"]])
    assert parsed == OutpaintArgs(64, 8, 2, ("up",))
    assert OutpaintArgs.from_script_args([32, 4, 1]).direction == ("left", "right", "up", "down")
    for bad, needle in [
        (["many"], "integers"),
        ([4], "pixels must be between 8 and 256"),
        ([64, 4, 9], "masked content"),
        ([64, 4, 0, ["sideways"]], "direction"),
        ([64, 4, 0, [], 5], "takes 4 arguments"),
    ]:
        with pytest.raises(InvalidRequestError, match=needle):
            OutpaintArgs.from_script_args(bad)


def test_expand_builds_canvas_and_inset_mask():
    source = Image.new("RGB", (64, 64), (10, 200, 30))
    req = expand(GenerationRequest(init_images=(source,)), OutpaintArgs(pixels=32, mask_blur=4, direction=("right",)))
    assert (req.width, req.height) == (128, 64) and req.init_images[0].size == (128, 64)
    mask = np.asarray(req.mask)
    assert mask[:, :56].max() == 0 and mask[:, 72:].min() == 255  # inset by 2·blur into the original
    assert (req.mask_blur_x, req.inpainting_fill, req.inpaint_full_res) == (8, 0, False)
    assert req.init_images[0].getpixel((10, 10)) == (10, 200, 30)
    with pytest.raises(InvalidRequestError, match="needs an init image"):
        expand(GenerationRequest(), OutpaintArgs())


def test_outpainting_keeps_the_original_and_paints_the_border(load_tiny, tiny_models):
    model = load_tiny(tiny_models["sd1"])
    source = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8"))
    base = GenerationRequest(prompt="sky", init_images=(source,), steps=3, sampler_name="Euler", seed=4)
    req = expand(base, OutpaintArgs(pixels=32, mask_blur=2, direction=("left", "up")))
    result = generate(model, dataclass_replace(req, denoising_strength=1.0))
    out = np.asarray(result.images[0], dtype=int)
    assert result.images[0].size == (128, 128)
    left, up = canvas_geometry(64, 64, OutpaintArgs(pixels=32, mask_blur=2, direction=("left", "up")))[2::2]
    inner = out[up + 16 :, left + 16 :]
    assert np.array_equal(inner, np.asarray(source, dtype=int)[16:, 16:])  # far from the seam: unchanged
    assert out[:up, :].std() > 0 and not np.all(out[:up, :] == 0)  # the new border was painted
    assert "Masked content: fill" in result.infotexts[0]


def dataclass_replace(request, **changes):
    import dataclasses

    return dataclasses.replace(request, **changes)
