"""Upscaler registry and Extras engine on tiny real-architecture models (spandrel) and the built-ins."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from modules.engine.extras import ExtrasOptions, run_extras
from modules.engine.upscalers import UpscalerLoadError, UpscalerRegistry, run_tiled, scan
from modules.errors import InvalidRequestError
from tests.support.tiny_upscalers import write_upscaler


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_upscaler("esrgan", root / "ESRGAN" / "4x_tiny.pth")
    write_upscaler("compact", root / "RealESRGAN" / "2x_compact.safetensors")
    (root / "ESRGAN" / "broken.pth").write_bytes(b"not a model")
    (root / "ESRGAN" / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def registry(models_dir):
    return UpscalerRegistry([models_dir / "ESRGAN", models_dir / "RealESRGAN"])


def picture(w=40, h=24, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def test_scan_lists_model_files_with_their_scale(models_dir):
    found = {u.name: u for u in scan([models_dir / "ESRGAN", models_dir / "RealESRGAN"])}
    assert set(found) == {"4x_tiny", "2x_compact", "broken"}
    assert found["4x_tiny"].scale == 4.0 and found["2x_compact"].scale == 2.0


def test_names_builtins_first(registry):
    assert registry.names()[:3] == ["None", "Lanczos", "Nearest"]
    assert {"4x_tiny", "2x_compact"} <= set(registry.names())
    api = {i["name"]: i for i in (u.to_api() for u in registry.infos())}
    assert api["4x_tiny"]["model_path"].endswith("4x_tiny.pth") and api["Lanczos"]["model_path"] is None


@pytest.mark.parametrize(("name", "size"), [("4x_tiny", (160, 96)), ("2x_compact", (80, 48)), ("Lanczos", (80, 48))])
def test_upscale_reaches_exact_size(registry, name, size):
    out = registry.upscale(picture(), *size, name)
    assert out.size == size and out.mode == "RGB"
    assert np.asarray(out).std() > 0


def test_model_runs_repeatedly_until_the_target_then_resizes(registry):
    # 2x model to 4x: two passes (40→80→160), then exact resize to a non-multiple target
    out = registry.upscale(picture(), 150, 90, "2x_compact")
    assert out.size == (150, 90)


def test_models_differ_from_plain_resampling(registry):
    a = np.asarray(registry.upscale(picture(), 80, 48, "2x_compact"), dtype=int)
    b = np.asarray(registry.upscale(picture(), 80, 48, "Lanczos"), dtype=int)
    c = np.asarray(registry.upscale(picture(), 80, 48, "Nearest"), dtype=int)
    assert np.abs(a - b).max() > 10 and np.abs(b - c).max() > 0


def test_tiled_equals_whole_image_within_rounding(registry):
    descriptor = registry._model("2x_compact")
    image = picture(70, 50, seed=3)
    whole = np.asarray(run_tiled(descriptor, image, 0, 0), dtype=int)
    tiled = np.asarray(run_tiled(descriptor, image, 32, 8), dtype=int)
    assert whole.shape == tiled.shape == (100, 140, 3)
    # a 3×3-conv net sees a few pixels past a tile edge; the overlap keeps the seams small
    assert np.abs(whole - tiled).mean() < 2.0


def test_unknown_and_broken_models_are_clear_errors(registry):
    with pytest.raises(InvalidRequestError, match="could not find upscaler named 'nope'"):
        registry.upscale(picture(), 80, 48, "nope")
    with pytest.raises(UpscalerLoadError, match=r"broken.pth: not a usable upscaler model"):
        registry.upscale(picture(), 80, 48, "broken")
    assert registry.upscale(picture(), 80, 48, "2x_compact").size == (80, 48)  # still works afterwards


def test_extras_scale_by_and_info(registry):
    out, info = run_extras(registry, picture(), ExtrasOptions(upscaling_resize=2, upscaler_1="4x_tiny"))
    assert out.size == (80, 48)
    assert info == {"Postprocess upscale by": 2, "Postprocess upscaler": "4x_tiny"}


def test_extras_scale_to_with_crop_and_blend(registry):
    opts = ExtrasOptions(
        resize_mode=1,
        upscaling_resize_w=64,
        upscaling_resize_h=64,
        upscaling_crop=True,
        upscaler_1="Lanczos",
        upscaler_2="2x_compact",
        extras_upscaler_2_visibility=0.5,
    )
    out, info = run_extras(registry, picture(), opts)
    assert out.size == (64, 64)
    assert list(info) == [
        "Postprocess upscale to",
        "Postprocess upscaler",
        "Postprocess upscaler 2",
        "Postprocess crop to",
    ]
    only_first, _ = run_extras(registry, picture(), dataclasses.replace(opts, extras_upscaler_2_visibility=0))
    assert not np.array_equal(np.asarray(out), np.asarray(only_first))


def test_extras_none_does_nothing_and_bad_fields_are_named(registry):
    image = picture()
    out, info = run_extras(registry, image, ExtrasOptions(upscaler_1="None", upscaler_2="Lanczos"))
    assert np.array_equal(np.asarray(out), np.asarray(image)) and info == {}
    with pytest.raises(
        InvalidRequestError, match=r"resize_mode must be 0.*upscaler_2: could not find upscaler named 'x'"
    ):
        run_extras(registry, image, ExtrasOptions(upscaler_2="x", resize_mode=5))
