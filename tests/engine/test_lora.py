"""lora: prompt tags, LoRA files (kohya and diffusers/PEFT) merged in place; images equal to a merged checkpoint's."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.engine.lora import LoraLibrary, LoraTag, parse_tags, read_layers
from modules.engine.lora_names import lora_targets
from modules.engine.networks import Networks, for_other_models
from modules.engine.pipeline import generate
from modules.engine.types import GenerationRequest
from modules.errors import InvalidRequestError
from tests.support.tiny_checkpoints import ldm_state_dict, save_checkpoint, write_yaml

RANK, ALPHA = 4, 2.0
TE, UNET = 0.8, 0.6


def test_tags_are_taken_out_of_the_prompt_with_a1111s_arguments():
    text, tags = parse_tags(
        "a <lora:one> cat, <lora:two:0.5>, <lyco:three:0.5:0.25> <hypernet:h:1>x<lora:f:te=0.3:unet=2>"
    )
    assert text == "a  cat, ,  x"
    assert tags == [
        LoraTag("one", 1.0, 1.0),
        LoraTag("two", 0.5, 0.5),
        LoraTag("three", 0.5, 0.25),
        LoraTag("f", 0.3, 2.0),
    ]
    assert parse_tags("no tags (a:1.2) [b:c:3]") == ("no tags (a:1.2) [b:c:3]", [])
    with pytest.raises(InvalidRequestError, match=r"<lora:x:lots>: 'lots' is not a number"):
        parse_tags("<lora:x:lots>")
    with pytest.raises(InvalidRequestError, match=r"<lora:x:1:inf>: 'inf' is not a finite number"):
        parse_tags("<lora:x:1:inf>")


def _kohya_names(keys: list[str], kind: str) -> list[str]:
    """What a LoRA trainer names: attention and feed-forward layers, a 3×3 convolution (LoCon), text q/k/v and MLP."""
    names = lora_targets(keys)
    unet_style = "lora_unet_input_blocks_" if kind == "sdxl" else "lora_unet_down_blocks_"
    wanted = [n for n in names if n.startswith(unet_style) and ("_attn" in n or "_ff_net_" in n)]
    wanted += [n for n in names if n.startswith(unet_style) and n.endswith(("_in_layers_2", "_resnets_0_conv1"))][:1]
    wanted += [n for n in names if n.startswith("lora_te") and n.endswith(("_q_proj", "_k_proj", "_v_proj", "_fc1"))]
    return wanted


def _pair(shape: tuple[int, ...], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank-``RANK`` (down, up) pair for a weight of ``shape`` (linear, or convolution with its kernel in down)."""
    down = torch.randn(RANK, *shape[1:], generator=generator) * 0.3
    up = torch.randn(shape[0], RANK, *([1, 1] if len(shape) == 4 else []), generator=generator) * 0.3
    return down, up


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def case(request, tmp_path_factory):
    """A tiny checkpoint, a kohya LoRA for it in models/Lora, and the checkpoint with that LoRA merged into the file."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"lora-{kind}")
    state = ldm_state_dict(kind, "tiny", dtype=torch.float32, seed=7)
    targets = lora_targets(state)
    generator = torch.Generator().manual_seed(3)
    tensors: dict[str, torch.Tensor] = {}
    merged = dict(state)
    for name in _kohya_names(list(state), kind):
        target = targets[name]
        weight = state[target.key]
        rows = weight.shape[0] // target.chunks
        down, up = _pair((rows, *weight.shape[1:]), generator)
        tensors |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(ALPHA),
        }
        multiplier = UNET if name.startswith("lora_unet_") else TE
        delta = (up.flatten(1) @ down.flatten(1)) * (ALPHA / RANK) * multiplier
        block = slice(target.chunk * rows, (target.chunk + 1) * rows)
        merged[target.key] = merged[target.key].clone()
        merged[target.key][block] = merged[target.key][block] + delta.reshape(rows, *weight.shape[1:])
    assert any(targets[n].chunks == 3 for n in _kohya_names(list(state), kind)) == (kind == "sdxl")  # OpenCLIP q/k/v
    lora_dir = root / "Lora"
    (lora_dir / "styles").mkdir(parents=True)
    lora_path = lora_dir / "styles" / "detail.safetensors"
    save_file(tensors, str(lora_path), metadata={"ss_network_dim": str(RANK)})
    paths = {}
    for name, weights in (("base", state), ("merged", merged)):
        paths[name] = save_checkpoint(weights, root / f"{kind}-{name}.safetensors")
        write_yaml(kind, paths[name], "tiny")
    return kind, LoraLibrary(lora_dir), lora_path, paths


def _image(model, prompt: str, loras: LoraLibrary) -> tuple[np.ndarray, str]:
    request = GenerationRequest(prompt=prompt, negative_prompt="ugly", steps=3, width=64, height=64, seed=21)
    result = generate(model, request, networks=Networks(loras=loras))
    return np.asarray(result.images[0], dtype=np.int16), result.infotexts[0]


def test_a_tagged_job_makes_the_merged_checkpoints_image_and_the_next_job_the_originals(case, load_tiny):
    _, library, lora_path, paths = case
    model = load_tiny(paths["base"])
    base, _ = _image(model, "a red cat", library)
    tagged, infotext = _image(model, f"a red cat<lora:detail:{TE}:{UNET}>", library)
    expected, _ = _image(load_tiny(paths["merged"]), "a red cat", library)
    assert np.abs(tagged - base).max() > 0
    assert np.array_equal(tagged, expected)  # text encoders and UNet changed as if the file had been merged
    with lora_path.open("rb") as file:  # A1111's LoRA hash: SHA-256 of everything after the safetensors header
        (length,) = struct.unpack("<Q", file.read(8))
        file.seek(8 + length)
        short = hashlib.sha256(file.read()).hexdigest()[:12]
    assert infotext.startswith(f"a red cat<lora:detail:{TE}:{UNET}>\nNegative prompt: ugly\n")  # kept as written
    assert f'Lora hashes: "detail: {short}"' in infotext
    again, _ = _image(model, f"a red cat<lora:detail:{TE}:{UNET}>", library)  # same set: nothing merged twice
    assert np.array_equal(again, tagged)
    assert np.array_equal(_image(model, "a red cat", library)[0], base)  # taken out bit for bit
    assert np.array_equal(_image(model, "a red cat<lora:detail:0>", library)[0], base)  # tag text never encoded


def test_bad_tags_are_clear_errors_and_leave_the_weights_alone(case, load_tiny, tmp_path):
    kind, library, _, paths = case
    model = load_tiny(paths["base"])
    base, _ = _image(model, "a red cat", library)
    with pytest.raises(InvalidRequestError, match=r"LoRA 'nope' not found in .*Lora \(found: detail\)"):
        _image(model, "a red cat <lora:detail:1> <lora:nope:1>", library)
    other = tmp_path / "Lora"
    other.mkdir()
    foreign = "lora_unet_down_blocks_0_attentions_0_proj_in" if kind == "sdxl" else "lora_unet_label_emb_0_0"
    save_file({f"{foreign}.lora_down.weight": torch.ones(2, 3), f"{foreign}.lora_up.weight": torch.ones(3, 2)},
              str(other / "foreign.safetensors"))  # fmt: skip
    save_file({"lora_unet_x.hada_w1_a": torch.ones(2, 2)}, str(other / "loha.safetensors"))
    with pytest.raises(InvalidRequestError, match=r"foreign.*another model type"):
        _image(model, "a red cat <lora:foreign>", LoraLibrary(other))
    (other / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nothing")
    with pytest.raises(InvalidRequestError, match=r"broken\.safetensors: cannot be read as a LoRA"):
        _image(model, "a red cat <lora:broken>", LoraLibrary(other))
    with pytest.raises(InvalidRequestError, match=r"loha\.safetensors: LyCORIS LoHa networks are not supported"):
        _image(model, "a red cat <lora:loha>", LoraLibrary(other))
    assert np.array_equal(_image(model, "a red cat", library)[0], base)


def test_diffusers_peft_names_read_as_the_kohya_ones(tmp_path):
    down, up = torch.randn(4, 8), torch.randn(16, 4)
    kohya = tmp_path / "kohya.safetensors"
    peft = tmp_path / "peft.safetensors"
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"lora_unet_{name.replace('.', '_')}.lora_down.weight": down,
               f"lora_unet_{name.replace('.', '_')}.lora_up.weight": up}, str(kohya))  # fmt: skip
    save_file({f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}, str(peft))
    (a,), (b,) = read_layers(kohya).items(), read_layers(peft).items()
    assert a[0] == b[0] and torch.equal(a[1].down, b[1].down) and torch.equal(a[1].up, b[1].up)
    assert a[1].delta((16, 8), "cpu").allclose(up @ down)


def test_the_library_lists_sub_folders_and_reads_metadata(case):
    _, library, lora_path, _ = case
    (file,) = library.refresh()
    assert (file.name, file.path) == ("detail", lora_path)
    assert file.metadata() == {"ss_network_dim": str(RANK)}
    header = json.loads(Path(lora_path).read_bytes()[8 : 8 + struct.unpack("<Q", lora_path.read_bytes()[:8])[0]])
    assert header["__metadata__"]["ss_network_dim"] == str(RANK)


def test_the_jobs_other_checkpoints_run_without_the_loras_a_cached_model_still_holds(case, load_tiny):

    _, library, _, paths = case
    other = load_tiny(paths["base"])
    base, _ = _image(other, "a red cat", library)
    _image(other, "a red cat <lora:detail>", library)  # a job in which it was the main model merged the LoRA
    main = load_tiny(paths["merged"])
    loaded = for_other_models(lambda name: other, main, Networks(loras=library))(
        "base"
    )  # as a refiner or hires checkpoint
    assert loaded is other and other.merged_loras == ()
    assert np.array_equal(_image(other, "a red cat", library)[0], base)
    same = for_other_models(lambda name: main, main, Networks(loras=library))
    _image(main, "a red cat <lora:detail>", library)
    assert same("merged").merged_loras != ()  # the main model itself keeps its LoRAs
