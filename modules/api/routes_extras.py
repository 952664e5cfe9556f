"""``/sdapi/v1/extra-single-image`` and ``/extra-batch-images``: A1111's Extras (upscale) over HTTP.

Results are returned, not saved (A1111's API passes ``save_output=False``). Face restoration is not available here,
so a non-zero ``gfpgan_visibility`` / ``codeformer_visibility`` is refused (422) instead of being ignored.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, ConfigDict

from modules.api.deps import Ctx
from modules.api.images import decode_base64_image, encode_base64
from modules.context import AppContext
from modules.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_OPTION_FIELDS = (
    "resize_mode",
    "upscaling_resize",
    "upscaling_resize_w",
    "upscaling_resize_h",
    "upscaling_crop",
    "upscaler_1",
    "upscaler_2",
    "extras_upscaler_2_visibility",
)


class ExtrasBaseRequest(BaseModel):
    """Fields shared by both endpoints, with A1111's defaults."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False

    def options(self) -> dict[str, Any]:
        """The engine's ExtrasOptions fields.

        Raises:
            InvalidRequestError: Face restoration was asked for.
        """
        if self.gfpgan_visibility or self.codeformer_visibility:
            raise InvalidRequestError(
                "gfpgan_visibility/codeformer_visibility: face restoration is not available in this version; send 0"
            )
        return {name: getattr(self, name) for name in _OPTION_FIELDS}


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    """``POST /sdapi/v1/extra-single-image``."""

    image: str = ""


class FileData(BaseModel):
    """One file of ``imageList``."""

    data: str
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    """``POST /sdapi/v1/extra-batch-images``."""

    imageList: list[FileData]  # noqa: N815 (A1111's field name)


class ExtrasSingleImageResponse(BaseModel):
    """The upscaled image and the info as HTML."""

    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    """The upscaled images and the info of the last one as HTML."""

    html_info: str
    images: list[str]


def create_extras_router() -> APIRouter:
    """Return the Extras router (paths relative to ``/sdapi/v1``)."""
    router = APIRouter()
    router.add_api_route(
        "/extra-single-image", extra_single_image, methods=["POST"], response_model=ExtrasSingleImageResponse
    )
    router.add_api_route(
        "/extra-batch-images", extra_batch_images, methods=["POST"], response_model=ExtrasBatchImagesResponse
    )
    return router


def _upscale_all(ctx: AppContext, images: list[Image.Image], options: dict[str, Any]) -> tuple[list[str], str]:
    encoded, info = [], ""
    for image in images:
        output = ctx.submit_extras(image, options, save=False).wait()
        encoded.append(encode_base64(ctx.encode_image(output.image, "png", image.info.get("parameters"))))
        info = output.info
    return encoded, f"<p>{html.escape(info)}</p>"


def extra_single_image(ctx: Ctx, req: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
    """Upscale one base64 image."""
    options = req.options()
    image = decode_base64_image(req.image, "image")
    images, info = _upscale_all(ctx, [image], options)
    return ExtrasSingleImageResponse(html_info=info, image=images[0] if req.show_extras_results else None)


def extra_batch_images(ctx: Ctx, req: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
    """Upscale every image of ``imageList``."""
    options = req.options()
    if not req.imageList:
        raise InvalidRequestError("imageList is empty: send at least one {data, name} image")
    decoded = [decode_base64_image(f.data, f"imageList[{i}]") for i, f in enumerate(req.imageList)]
    images, info = _upscale_all(ctx, decoded, options)
    return ExtrasBatchImagesResponse(html_info=info, images=images if req.show_extras_results else [])
