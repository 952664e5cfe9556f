import json

import pytest
from pydantic import ValidationError

from modules.errors import SettingsError
from modules.settings import Settings


def test_defaults_are_a1111s():
    s = Settings()
    assert s.samples_format == "png" and s.samples_save and s.CLIP_stop_at_last_layers == 1
    assert s.outdir_txt2img_samples == "outputs/txt2img-images"
    assert s.send_seed is True


def test_frozen():
    with pytest.raises(ValidationError):
        Settings().samples_format = "jpg"


def test_with_overrides_validates_and_copies():
    s = Settings()
    t = s.with_overrides({"CLIP_stop_at_last_layers": 2, "samples_format": "jpg"})
    assert (t.CLIP_stop_at_last_layers, t.samples_format) == (2, "jpg")
    assert s.CLIP_stop_at_last_layers == 1


def test_unknown_key_named_in_error():
    with pytest.raises(SettingsError, match="no_such_option"):
        Settings().with_overrides({"no_such_option": 1})


def test_known_a1111_key_ignored():
    assert Settings().with_overrides({"face_restoration_model": "CodeFormer"}) == Settings()


def test_bad_value_named_in_error():
    with pytest.raises(SettingsError, match="CLIP_stop_at_last_layers"):
        Settings().with_overrides({"CLIP_stop_at_last_layers": 99})


def test_save_load_roundtrip_keeps_foreign_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"some_extension_option": 5, "jpeg_quality": 90}))
    s = Settings.load(path)
    assert s.jpeg_quality == 90
    s.with_overrides({"jpeg_quality": 70}).save(path)
    data = json.loads(path.read_text())
    assert data["jpeg_quality"] == 70 and data["some_extension_option"] == 5
    assert Settings.load(path).jpeg_quality == 70


def test_bad_values_in_file_reset_to_default(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"jpeg_quality": "high", "samples_format": "webp"}))
    s = Settings.load(path)
    assert s.jpeg_quality == 80 and s.samples_format == "webp"


def test_corrupt_file_kept_aside(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    assert Settings.load(path) == Settings()
    assert (tmp_path / "config.json.corrupt").read_text() == "{not json"
