import dataclasses

import pytest

from modules.engine import kloop, samplers
from modules.engine.ksampling.samplers import SAMPLERS as STEP_FUNCTIONS
from modules.engine.ksampling.schedules import SCHEDULES as SCHEDULE_FUNCTIONS
from modules.engine.samplers import SAMPLERS, SCHEDULES, find_schedule, resolve_sampler, sampler_list, schedule_list
from modules.errors import InvalidRequestError

UI_ORDER = [
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 2S a",
    "DPM++ 3M SDE",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM fast",
    "DPM adaptive",
    "Restart",
    "DDIM",
    "DDIM CFG++",
    "PLMS",
    "UniPC",
    "LCM",
]


def test_sampler_table_order_and_every_sampler_has_an_implementation():
    assert [s.name for s in SAMPLERS] == UI_ORDER
    timestep = {s.name for s in SAMPLERS if s.timestep_sampler}
    assert timestep == {"DDIM", "DDIM CFG++", "PLMS", "UniPC"} == set(kloop.TIMESTEP_SAMPLERS)
    assert {s.name for s in SAMPLERS} - timestep == set(STEP_FUNCTIONS)
    assert {s.name for s in SCHEDULES} == set(SCHEDULE_FUNCTIONS)


def test_tables_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLERS[0].name = "x"
    with pytest.raises(TypeError):
        SAMPLERS[0].options["scheduler"] = "exponential"


def test_schedule_table_matches_spec():
    rows = [(s["name"], s["label"], s["aliases"], s["default_rho"], s["need_inner_model"]) for s in schedule_list()]
    assert rows == [
        ("automatic", "Automatic", None, -1, False),
        ("uniform", "Uniform", None, -1, True),
        ("karras", "Karras", None, 7.0, False),
        ("exponential", "Exponential", None, -1, False),
        ("polyexponential", "Polyexponential", None, 1.0, False),
        ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1, True),
        ("kl_optimal", "KL Optimal", None, -1, False),
        ("align_your_steps", "Align Your Steps", None, -1, False),
        ("simple", "Simple", None, -1, True),
        ("normal", "Normal", None, -1, True),
        ("ddim", "DDIM", None, -1, True),
        ("beta", "Beta", None, -1, True),
    ]


def test_automatic_resolves_to_default_schedule():
    assert resolve_sampler("DPM++ 2M", "Automatic")[1].label == "Karras"
    assert resolve_sampler("DPM++ 2M SDE", None)[1].label == "Exponential"
    assert resolve_sampler("Euler", "Automatic")[1].label == "Automatic"
    assert resolve_sampler("Euler", "Karras")[1].label == "Karras"


@pytest.mark.parametrize(
    "alias,name",
    [
        ("k_dpmpp_2m", "DPM++ 2M"),
        ("k_euler_ancestral", "Euler a"),
        ("k_euler_a", "Euler a"),
        ("ddim", "DDIM"),
        ("unipc", "UniPC"),
        ("euler A", "Euler a"),
        ("dpm++ 2m sde", "DPM++ 2M SDE"),
        ("K_LMS", "LMS"),
    ],
)
def test_aliases_and_case(alias, name):
    assert resolve_sampler(alias, None)[0].name == name


@pytest.mark.parametrize(
    "legacy,name,label",
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("Euler SGMUniform", "Euler", "SGM Uniform"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ],
)
def test_legacy_combined_names(legacy, name, label):
    sampler, schedule = resolve_sampler(legacy, "Automatic")
    assert (sampler.name, schedule.label) == (name, label)


def test_explicit_scheduler_wins_over_legacy_suffix():
    assert resolve_sampler("DPM++ 2M Karras", "Exponential")[1].label == "Exponential"


def test_unknown_names_raise_with_valid_list():
    with pytest.raises(InvalidRequestError, match=r"Unknown sampler_name 'Nope'.*DPM\+\+ 2M"):
        resolve_sampler("Nope", None)
    with pytest.raises(InvalidRequestError, match=r"Unknown scheduler 'Weird'.*Karras"):
        resolve_sampler("Euler", "Weird")


@pytest.mark.parametrize(
    ("name", "alias", "schedule", "options"),
    [
        ("DPM fast", "k_dpm_fast", "Automatic", {"uses_ensd": "True"}),
        ("DPM adaptive", "k_dpm_ad", "Automatic", {"uses_ensd": "True"}),
        ("Restart", "restart", "Karras", {"scheduler": "karras", "second_order": "True"}),
        ("DDIM CFG++", "ddim_cfgpp", "Automatic", {}),
        ("LCM", "k_lcm", "Automatic", {}),
        (
            "DPM++ 3M SDE",
            "k_dpmpp_3m_sde",
            "Exponential",
            {"scheduler": "exponential", "discard_next_to_last_sigma": "True", "brownian_noise": "True"},
        ),
    ],
)
def test_samplers_resolve_with_their_default_schedule_and_options(name, alias, schedule, options):
    sampler, resolved = resolve_sampler(alias, None)
    assert (sampler.name, resolved.label, dict(sampler.options)) == (name, schedule, options)
    assert {"name": name, "aliases": [alias], "options": options} in sampler_list()


def test_missing_requirement_makes_sampler_unusable(monkeypatch):
    spec = dataclasses.replace(SAMPLERS[1], requires=("no_such_module_xyz",))
    monkeypatch.setattr(samplers, "SAMPLERS", (spec,))
    with pytest.raises(InvalidRequestError, match="needs no_such_module_xyz"):
        resolve_sampler("DPM++ SDE", None)


def test_sampler_list_shape():
    items = sampler_list()
    assert items[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert [i["name"] for i in items] == UI_ORDER
    assert all(set(i) == {"name", "aliases", "options"} for i in items)


def test_find_schedule_accepts_name_label_alias():
    assert find_schedule("sgm_uniform") is find_schedule("SGM Uniform") is find_schedule("sgmuniform")
    assert find_schedule("nonexistent") is None
    assert len(SCHEDULES) == 12
