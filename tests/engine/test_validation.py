import pytest

from modules.engine.types import GenerationRequest
from modules.engine.validation import validate_request
from modules.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("width", 500, "width must be a multiple of 8"),
        ("height", 0, "height must be a multiple of 8"),
        ("width", 8192, "between 64 and 4096"),
        ("steps", 0, "steps must be between 1"),
        ("batch_size", 0, "batch_size"),
        ("n_iter", -1, "n_iter"),
        ("cfg_scale", -1.0, "cfg_scale"),
        ("denoising_strength", 1.5, "denoising_strength"),
        ("subseed_strength", -0.1, "subseed_strength"),
    ],
)
def test_bad_fields_are_named(field, value, needle):
    with pytest.raises(InvalidRequestError, match=needle):
        validate_request(GenerationRequest(**{field: value}))


def test_all_problems_listed():
    with pytest.raises(InvalidRequestError) as exc:
        validate_request(GenerationRequest(width=7, steps=0))
    assert "width" in str(exc.value) and "steps" in str(exc.value)


def test_defaults_valid():
    validate_request(GenerationRequest())


def test_hires_and_refiner_requests_pass_the_range_checks():
    validate_request(GenerationRequest(enable_hr=True))  # hires fix exists; its own checks are in engine/hires.py
    validate_request(GenerationRequest(refiner_checkpoint="sdxl_refiner"))  # checked in engine/refiner.py


def test_image_cfg_scale_out_of_range_is_named():
    with pytest.raises(InvalidRequestError, match="image_cfg_scale must be between 0 and 100, got -1"):
        validate_request(GenerationRequest(image_cfg_scale=-1.0))
    validate_request(GenerationRequest(image_cfg_scale=1.5))
