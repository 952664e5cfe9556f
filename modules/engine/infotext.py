"""Format and parse A1111 "parameters" text (round-trip exact).

The format (a1111-compat.md §5): the prompt line(s), an optional ``Negative prompt:`` line, then one line of
``Key: value`` pairs joined by ``", "``.

>>> text = format_infotext("a cat", "blurry", {"Steps": 20, "Sampler": "Euler", "Seed": 1, "Size": "512x512"})
>>> print(text)
a cat
Negative prompt: blurry
Steps: 20, Sampler: Euler, Seed: 1, Size: 512x512
>>> parsed = parse_infotext(text)
>>> parsed["Prompt"], parsed["Steps"], parsed["Size-1"], parsed["Clip skip"]
('a cat', '20', '512', '1')
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from modules.engine.samplers import split_sampler_name

logger = logging.getLogger(__name__)

# Fixed key order of A1111's create_infotext; other keys follow in insertion order, then the trailing keys.
FIXED_KEYS = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
TRAILING_KEYS = ("Version", "User")

# Added by the reader when missing (a1111-compat.md §5.2 step 5).
PARSE_DEFAULTS: Mapping[str, object] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


def quote(value: object) -> str:
    """Return ``value`` as infotext writes it: JSON-quoted when it contains ``,``, ``:`` or a newline.

    >>> quote(7), quote("Latent"), quote("a: 1, b: 2")
    ('7', 'Latent', '"a: 1, b: 2"')
    """
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    r"""Decode a JSON-quoted value; anything that is not valid JSON is returned unchanged.

    >>> unquote('"a: 1, b: \\"x\\""'), unquote('"broken')
    ('a: 1, b: "x"', '"broken')
    """
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return str(json.loads(text))
    except ValueError:
        return text


def _ordered_items(params: Mapping[str, object]) -> list[tuple[str, object]]:
    """Return the parameters in A1111's order: fixed keys, extras by insertion, then Version and User."""
    fixed = [(k, params[k]) for k in FIXED_KEYS if k in params]
    extras = [(k, v) for k, v in params.items() if k not in FIXED_KEYS and k not in TRAILING_KEYS]
    trailing = [(k, params[k]) for k in TRAILING_KEYS if k in params]
    return fixed + extras + trailing


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Write an infotext exactly as A1111's ``create_infotext`` does.

    Args:
        prompt: Positive prompt (may span several lines).
        negative_prompt: Negative prompt; its line is omitted when empty.
        params: Generation parameters, e.g. ``{"Steps": 20, "Size": "512x512"}``. None values are omitted; a value
            equal to its key is written as the bare key. Values are written with ``str()``.

    Returns:
        The infotext, stripped of leading and trailing whitespace.

    >>> format_infotext("", "", {"Steps": 4, "Version": "v1", "Lora hashes": "a: 1, b: 2", "Tiling": None})
    'Steps: 4, Lora hashes: "a: 1, b: 2", Version: v1'
    """
    pairs = [k if k == v else f"{k}: {quote(v)}" for k, v in _ordered_items(params) if v is not None]
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}".strip()


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    """Split the non-parameter lines into the prompt and the negative prompt."""
    prompt: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not negative and line.startswith(_NEGATIVE):
            negative.append(line[len(_NEGATIVE) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    return "\n".join(prompt), "\n".join(negative)


def _parse_params(line: str) -> dict[str, object]:
    """Parse the parameter line into a dict; ``WxH`` values become ``<Key>-1`` and ``<Key>-2``."""
    res: dict[str, object] = {}
    for key, raw in _RE_PARAM.findall(line):
        value = unquote(raw.strip()) if raw.startswith('"') else raw
        size = _RE_SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    return res


def _restore_first_pass_size(res: dict[str, object]) -> None:
    """Convert the legacy ``First pass size`` of old hires-fix infotexts into ``Size`` and ``Hires resize``."""
    if "First pass size-1" not in res or "Hires resize-1" in res:
        return
    width, height = int(str(res.get("Size-1", 512))), int(str(res.get("Size-2", 512)))
    first_w, first_h = int(str(res["First pass size-1"])), int(str(res.get("First pass size-2", 0)))
    if first_w == 0 or first_h == 0:
        scale = math.sqrt(512 * 512 / (width * height))
        first_w, first_h = math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _uses_emphasis(text: str) -> bool:
    """Whether a prompt contains emphasis brackets."""
    return any(c in text for c in "()[]")


def parse_infotext(text: str, *, add_defaults: bool = True) -> dict[str, object]:
    r"""Read an infotext as A1111's ``parse_generation_parameters`` does (steps 1–3 and 5 of §5.2).

    Args:
        text: The infotext.
        add_defaults: Add A1111's defaults for missing keys (turn off to get only what the text holds).

    Returns:
        ``Prompt``, ``Negative prompt`` and every parameter; values stay strings (defaults keep their types).

    >>> r = parse_infotext('a (cat)\nSteps: 20, Size: 512x768, Lora hashes: "x: 1, y: 2"')
    >>> r["Size-2"], r["Lora hashes"], r["Emphasis"]
    ('768', 'x: 1, y: 2', 'Original')
    >>> parse_infotext("just a prompt, with: one colon", add_defaults=False)
    {'Prompt': 'just a prompt, with: one colon', 'Negative prompt': ''}
    """
    *lines, last = text.strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative = _split_prompts(lines)
    res: dict[str, object] = {"Prompt": prompt, "Negative prompt": negative, **_parse_params(last)}
    if not add_defaults:
        return res
    _restore_first_pass_size(res)
    for key, value in PARSE_DEFAULTS.items():
        res.setdefault(key, value)
    if "Emphasis" not in res and (_uses_emphasis(prompt) or _uses_emphasis(negative)):
        res["Emphasis"] = "Original"
    if "Hypernet" in res:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    return res


def parsed_to_params(parsed: Mapping[str, object]) -> tuple[str, str, dict[str, object]]:
    """Turn a ``parse_infotext`` result back into ``format_infotext`` arguments (``K-1``/``K-2`` → ``K: WxH``).

    >>> parsed_to_params({"Prompt": "p", "Negative prompt": "", "Size-1": "5", "Size-2": "6", "Seed": "1"})
    ('p', '', {'Size': '5x6', 'Seed': '1'})
    """
    params: dict[str, object] = {}
    for key, value in parsed.items():
        if key in ("Prompt", "Negative prompt") or (key.endswith("-2") and f"{key[:-2]}-1" in parsed):
            continue
        if key.endswith("-1") and f"{key[:-2]}-2" in parsed:
            params[key[:-2]] = f"{value}x{parsed[f'{key[:-2]}-2']}"
        else:
            params[key] = value
    return str(parsed.get("Prompt", "")), str(parsed.get("Negative prompt", "")), params


# Infotext key → (request field, converter). Field names are A1111's API names (GenerationRequest /
# GenerationOptions); callers drop the fields their request type does not have.
_FIELD_MAP: Mapping[str, tuple[str, Callable[[Any], object]]] = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Image CFG scale": ("image_cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
    "Denoising strength": ("denoising_strength", float),
    "Clip skip": ("clip_skip", int),
    "ENSD": ("eta_noise_seed_delta", int),
    "RNG": ("randn_source", str),
    "Emphasis": ("emphasis", str),
    "Hires upscale": ("hr_scale", float),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires checkpoint": ("hr_checkpoint_name", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Mask blur": ("mask_blur", int),
    "Masked area padding": ("inpaint_full_res_padding", int),
    "Masked content": ("inpainting_fill", lambda v: _label_index(v, _MASKED_CONTENT)),
    "Inpaint area": ("inpaint_full_res", lambda v: _label_index(v, _INPAINT_AREAS) == 1),
    "Mask mode": ("inpainting_mask_invert", lambda v: _label_index(v, _MASK_MODES)),
    "Refiner": ("refiner_checkpoint", str),
    "Refiner switch at": ("refiner_switch_at", float),
    # sampler parameters: A1111 settings (``infotext=`` options); callers apply them as override settings
    "Eta": ("eta_ancestral", float),
    "Eta DDIM": ("eta_ddim", float),
    "Sigma churn": ("s_churn", float),
    "Sigma tmin": ("s_tmin", float),
    "Sigma tmax": ("s_tmax", float),
    "Sigma noise": ("s_noise", float),
    "Schedule min sigma": ("sigma_min", float),
    "Schedule max sigma": ("sigma_max", float),
    "Schedule rho": ("rho", float),
    "Beta schedule alpha": ("beta_dist_alpha", float),
    "Beta schedule beta": ("beta_dist_beta", float),
    "Beta scheduler alpha": ("beta_dist_alpha", float),  # what A1111 reads back (it writes "schedule")
    "Beta scheduler beta": ("beta_dist_beta", float),
    "Discard penultimate sigma": ("always_discard_next_to_last_sigma", lambda v: str(v).lower() == "true"),
    "UniPC variant": ("uni_pc_variant", str),
    "UniPC skip type": ("uni_pc_skip_type", str),
    "UniPC order": ("uni_pc_order", int),
    "UniPC lower order final": ("uni_pc_lower_order_final", lambda v: str(v).lower() == "true"),
    "Old prompt editing timelines": ("use_old_scheduling", lambda v: str(v).lower() == "true"),
    "NGMS": ("s_min_uncond", float),
    "NGMS all steps": ("s_min_uncond_all", lambda v: str(v).lower() == "true"),
    "Tiling": ("tiling", lambda v: str(v).lower() == "true"),
}
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
_MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
_INPAINT_AREAS = ("Whole picture", "Only masked")
_MASK_MODES = ("Inpaint masked", "Inpaint not masked")


def _label_index(value: object, labels: tuple[str, ...]) -> int:
    """The index of an A1111 radio label written in infotext (ValueError for an unknown one)."""
    return labels.index(str(value))


def _convert(value: object, kind: Callable[[Any], object]) -> object:
    """Convert an infotext string to ``kind``; ints written as floats (``20.0``) are accepted."""
    if kind is int:
        return int(float(str(value)))
    return kind(value)


def infotext_to_request_fields(parsed: Mapping[str, object]) -> dict[str, object]:
    r"""Map a ``parse_infotext`` result to request field names (PNG Info → "send to txt2img").

    A legacy combined sampler (``DPM++ 2M Karras``) is split into sampler and schedule type. ``Seed resize from``
    maps ``-1`` to the width (A1111's seed.py swaps them; we do not). Values that do not convert are skipped.

    >>> fields = infotext_to_request_fields(parse_infotext("x\nSteps: 20, Sampler: DPM++ 2M Karras, Size: 5x6"))
    >>> fields["sampler_name"], fields["scheduler"], fields["width"]
    ('DPM++ 2M', 'Karras', 5)
    """
    fields: dict[str, object] = {}
    for key, (name, kind) in _FIELD_MAP.items():
        if key not in parsed:
            continue
        try:
            fields[name] = _convert(parsed[key], kind)
        except (TypeError, ValueError):
            logger.warning("Ignoring infotext %s=%r: not a valid value for %s", key, parsed[key], name)
    if "sampler_name" in fields:
        sampler, schedule = split_sampler_name(str(fields["sampler_name"]))
        fields["sampler_name"] = sampler
        if schedule and fields.get("scheduler", "Automatic") == "Automatic":
            fields["scheduler"] = schedule
    if "Hires upscale" in parsed or fields.get("hr_resize_x", 0):
        fields["enable_hr"] = True
    version = _VERSION.match(str(parsed.get("Version", "")))
    if version and tuple(map(int, version.groups())) < (1, 6, 0) and "[" in str(parsed.get("Prompt", "")):
        fields.setdefault("use_old_scheduling", True)  # A1111's back-compat: prompt editing before 1.6.0
    return fields
