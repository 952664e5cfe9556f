"""Named widget groups, Settings field → widget mapping, form values (dict) → GenerationRequest.

Everything here is pure data mapping (no layout), so it is unit-tested without starting gradio.
"""

from __future__ import annotations

import logging
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import gradio as gr

from modules.engine.types import GenerationRequest
from modules.errors import SettingsError
from modules.settings import Settings

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

logger = logging.getLogger(__name__)

# Form field (= GenerationRequest field) → (elem_id suffix, label, minimum, maximum). The suffix is A1111's.
NUMERIC_FIELDS: Mapping[str, tuple[str, str, float, float]] = {
    "steps": ("steps", "Sampling steps", 1, 150),
    "width": ("width", "Width", 64, 2048),
    "height": ("height", "Height", 64, 2048),
    "n_iter": ("batch_count", "Batch count", 1, 100),
    "batch_size": ("batch_size", "Batch size", 1, 8),
    "cfg_scale": ("cfg_scale", "CFG Scale", 1.0, 30.0),
    "subseed_strength": ("subseed_strength", "Variation strength", 0.0, 1.0),
    "seed_resize_from_w": ("seed_resize_from_w", "Resize seed from width", 0, 2048),
    "seed_resize_from_h": ("seed_resize_from_h", "Resize seed from height", 0, 2048),
    "denoising_strength": ("denoising_strength", "Denoising strength", 0.0, 1.0),
    "image_cfg_scale": ("image_cfg_scale", "Image CFG Scale", 0.0, 3.0),
    "hr_scale": ("hr_scale", "Upscale by", 1.0, 4.0),
    "hr_second_pass_steps": ("hires_steps", "Hires steps", 0, 150),
    "hr_resize_x": ("hr_resize_x", "Resize width to", 0, 2048),
    "hr_resize_y": ("hr_resize_y", "Resize height to", 0, 2048),
}
INT_FIELDS: frozenset[str] = frozenset(
    {
        "steps",
        "width",
        "height",
        "n_iter",
        "batch_size",
        "seed",
        "subseed",
        "seed_resize_from_w",
        "seed_resize_from_h",
        "resize_mode",
        "hr_second_pass_steps",
        "hr_resize_x",
        "hr_resize_y",
    }
)
FLOAT_FIELDS: frozenset[str] = frozenset(
    {"cfg_scale", "image_cfg_scale", "subseed_strength", "denoising_strength", "hr_scale", "refiner_switch_at"}
)
BOOL_FIELDS: frozenset[str] = frozenset({"enable_hr", "inpaint_full_res"})
# Optional request fields where an empty widget (or A1111's "Use same …" choice) means None.
OPTIONAL_FIELDS: frozenset[str] = frozenset({"hr_sampler_name", "hr_scheduler", "hr_checkpoint_name"})
# Fields an infotext may fill in the txt2img form, and the setting that gates each (None = always sent).
PASTE_GATES: Mapping[str, str | None] = {
    "prompt": None,
    "negative_prompt": None,
    "styles": None,  # found in a pasted prompt by ctx.infotext_fields (A1111's "Apply if any")
    "steps": None,
    "sampler_name": None,
    "scheduler": None,
    "cfg_scale": None,
    "seed": "send_seed",
    "subseed": "send_seed",
    "subseed_strength": "send_seed",
    "seed_resize_from_w": "send_size",
    "seed_resize_from_h": "send_size",
    "width": "send_size",
    "height": "send_size",
}
SECTION_LABELS: Mapping[str, str] = {
    "sd": "Stable Diffusion",
    "sampler": "Sampler parameters",
    "saving": "Saving images/grids",
    "saving_paths": "Paths for saving",
    "ui": "User interface",
    "live_previews": "Live previews",
    "compatibility": "Compatibility",
}


def _as_number(name: str, value: Any) -> float:
    """Convert a widget value to a number, or fail with a message naming the field."""
    label = NUMERIC_FIELDS[name][1] if name in NUMERIC_FIELDS else name.replace("_", " ").capitalize()
    if value is None or value == "":
        raise gr.Error(f"{label}: a number is required.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{label}: {value!r} is not a number.") from None
    if number != number:  # NaN
        raise gr.Error(f"{label}: {value!r} is not a number.")
    if name in INT_FIELDS and number != int(number):
        raise gr.Error(f"{label}: {value!r} must be a whole number.")
    return number


def _check_range(name: str, number: float) -> None:
    if name not in NUMERIC_FIELDS:
        return
    _, label, low, high = NUMERIC_FIELDS[name]
    if not low <= number <= high:
        raise gr.Error(f"{label} must be between {low:g} and {high:g} (got {number:g}).")


def _check_choice(label: str, value: str, choices: Iterable[str] | None) -> None:
    if choices is None:
        return
    allowed = list(choices)
    if value not in allowed:
        raise gr.Error(f"{label}: unknown value {value!r}. Choose one of: {', '.join(allowed)}.")


def _field_value(name: str, value: Any) -> Any:
    """Convert one widget value to the request field's type, checking numeric ranges."""
    if name in INT_FIELDS or name in FLOAT_FIELDS:
        if name in ("seed", "subseed") and value in (None, ""):
            value = -1
        number = _as_number(name, value)
        _check_range(name, number)
        return int(number) if name in INT_FIELDS else float(number)
    if name in BOOL_FIELDS:
        return bool(value)
    if name in OPTIONAL_FIELDS:
        return None if not value or str(value).startswith("Use same") else str(value)
    if name == "styles":
        return tuple(str(s) for s in (value or ()))
    return "" if value is None else str(value)


def to_request(
    values: Mapping[str, Any],
    *,
    samplers: Iterable[str] | None = None,
    schedulers: Iterable[str] | None = None,
) -> GenerationRequest:
    """Build a GenerationRequest from form values keyed by request field name.

    Keys are GenerationRequest field names (``n_iter`` for "Batch count") plus ``subseed_show`` (the "Extra"
    checkbox: when it is off, variation seed and seed resize are not used, as in A1111). Missing keys keep the
    request defaults; unknown keys are ignored.

    Args:
        values: Widget values by field name.
        samplers: Allowed sampler names (not checked when None).
        schedulers: Allowed schedule-type labels (not checked when None).

    Raises:
        gr.Error: Naming the field and the allowed range when a value is missing, not a number or out of range.
    """
    data = {
        name: _field_value(name, values[name])
        for name in GenerationRequest.__dataclass_fields__
        if name in values and name not in ("init_images", "mask")
    }
    for name in ("width", "height"):
        if name in data and data[name] % 8:
            raise gr.Error(f"{name.capitalize()} must be a multiple of 8 (got {data[name]}).")
    if "sampler_name" in data:
        _check_choice("Sampling method", data["sampler_name"], samplers)
    if "scheduler" in data:
        _check_choice("Schedule type", data["scheduler"], schedulers)
    if not values.get("subseed_show", True):
        data.update(subseed=-1, subseed_strength=0.0, seed_resize_from_w=-1, seed_resize_from_h=-1)
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if data.get(name, -1) <= 0:
            data[name] = -1
    return GenerationRequest(**data)


def paste_values(fields: Mapping[str, Any], settings: Settings, choices: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """Pick the infotext fields that fill the txt2img form ("Send to txt2img", the ↙️ button).

    Args:
        fields: ``ctx.infotext_fields(text)`` (request field names).
        settings: Current settings; ``send_seed`` / ``send_size`` gate seeds and sizes as in A1111.
        choices: Allowed values of the dropdown fields (``sampler_name``, ``scheduler``); others are dropped.

    Returns:
        Form values by field name, plus ``subseed_show`` when a variation seed or seed resize is present.
    """
    out: dict[str, Any] = {}
    for name, gate in PASTE_GATES.items():
        if name not in fields or (gate is not None and not getattr(settings, gate)):
            continue
        value = fields[name]
        if name in choices and value not in list(choices[name]):
            logger.info("Not pasting %s=%r: not one of the available choices", name, value)
            continue
        out[name] = list(value) if name == "styles" else value
    resize = out.get("seed_resize_from_w", -1), out.get("seed_resize_from_h", -1)
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if name in out and out[name] <= 0:
            out[name] = 0
    if float(out.get("subseed_strength", 0) or 0) > 0 or min(resize) > 0:
        out["subseed_show"] = True
    return out


def override_entries(pasted: Mapping[str, Any], settings: Settings) -> list[str]:
    """``"Label: value"`` for each pasted setting that differs from the current one (A1111's "Override settings").

    Args:
        pasted: Setting key → value, as ``modules.settings.infotext_settings`` finds them in an infotext.
        settings: The current settings; equal values and values the setting does not accept are left out.
    """
    entries = []
    for key, value in pasted.items():
        try:
            wanted = getattr(settings.with_overrides({key: value}), key)
        except SettingsError:
            logger.info("Not offering %s=%r as an override: not a valid value", key, value)
            continue
        if wanted != getattr(settings, key):
            entries.append(f"{_setting_label(key)}: {wanted}")
    return entries


def overrides_from_entries(entries: Iterable[str] | None) -> dict[str, str]:
    """The per-job settings chosen in "Override settings" (entries as ``override_entries`` writes them).

    Raises:
        gr.Error: For an entry that names no setting.
    """
    by_label = {_setting_label(key): key for key in Settings.model_fields}
    out = {}
    for entry in entries or ():
        label, _, value = str(entry).partition(": ")
        if label not in by_label:
            raise gr.Error(f"Override settings: {label!r} is not a setting.")
        out[by_label[label]] = value
    return out


def _setting_label(key: str) -> str:
    """The label a setting shows in the UI (its description), or its key."""
    return Settings.model_fields[key].description or key


@dataclass(frozen=True)
class WidgetSpec:
    """Which widget shows a setting, as plain data (``ui.settings_tab`` turns it into a gradio component)."""

    key: str
    kind: Literal["checkbox", "dropdown", "slider", "number", "textbox"]
    label: str
    section: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    is_int: bool = False

    @property
    def elem_id(self) -> str:
        """A1111's element id for a setting: ``setting_<key>``."""
        return f"setting_{self.key}"


def _bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for item in info.metadata:
        low = getattr(item, "ge", low) if getattr(item, "ge", None) is not None else low
        high = getattr(item, "le", high) if getattr(item, "le", None) is not None else high
    return low, high


def _literal_choices(annotation: Any) -> tuple[str, ...] | None:
    if typing.get_origin(annotation) is Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _literal_choices(arg)
            if found:
                return found
    return None


def widget_spec(key: str, info: FieldInfo) -> WidgetSpec:
    """Map one Settings field to a widget.

    bool → Checkbox, Literal → Dropdown, number with both bounds → Slider, other numbers → Number, else Textbox.
    """
    label = info.description or key
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    section = str(extra.get("section", "other"))
    annotation = info.annotation
    choices = _literal_choices(annotation)
    if annotation is bool:
        return WidgetSpec(key, "checkbox", label, section)
    if choices:
        return WidgetSpec(key, "dropdown", label, section, choices=choices)
    if annotation in (int, float):
        is_int = annotation is int
        low, high = _bounds(info)
        if low is not None and high is not None:
            step = 1 if is_int else max((high - low) / 100, 0.01)
            return WidgetSpec(key, "slider", label, section, minimum=low, maximum=high, step=step, is_int=is_int)
        return WidgetSpec(key, "number", label, section, minimum=low, maximum=high, is_int=is_int)
    return WidgetSpec(key, "textbox", label, section)


def settings_specs(exclude: Iterable[str] = ()) -> list[WidgetSpec]:
    """Widget specs for every Settings field except ``exclude``, in schema order."""
    skip = set(exclude)
    return [widget_spec(key, info) for key, info in Settings.model_fields.items() if key not in skip]


def group_by_section(specs: Iterable[WidgetSpec]) -> dict[str, list[WidgetSpec]]:
    """Group specs by section label (``SECTION_LABELS``; unknown sections get a title-cased name), keeping order."""
    groups: dict[str, list[WidgetSpec]] = {}
    for spec in specs:
        title = SECTION_LABELS.get(spec.section, spec.section.replace("_", " ").capitalize())
        groups.setdefault(title, []).append(spec)
    return groups


def settings_changes(values: Mapping[str, Any], current: Settings) -> dict[str, Any]:
    """The settings whose widget value differs from ``current`` (numbers coerced to the field's type)."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        info = Settings.model_fields.get(key)
        if info is None:
            continue
        new = value
        if info.annotation is int and isinstance(value, float) and value == int(value):
            new = int(value)
        elif info.annotation is str and value is None:
            new = ""
        if new != getattr(current, key):
            changes[key] = new
    return changes


def describe_changes(changes: Mapping[str, Any]) -> str:
    """The ``settings_result`` text: how many settings changed, and which."""
    if not changes:
        return "Nothing changed."
    noun = "setting" if len(changes) == 1 else "settings"
    return f"{len(changes)} {noun} changed: {', '.join(changes)}."
