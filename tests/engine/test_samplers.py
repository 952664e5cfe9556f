import dataclasses

import pytest
import torch

from modules.engine import samplers
from modules.engine.samplers import (
    SAMPLERS,
    SCHEDULES,
    find_schedule,
    make_scheduler,
    resolve_sampler,
    sampler_list,
    schedule_list,
)
from modules.errors import InvalidRequestError

SD1_CONFIG = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
}

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


def test_sampler_table_order_and_unavailable():
    assert [s.name for s in SAMPLERS] == UI_ORDER
    unavailable = {s.name for s in SAMPLERS if not s.available}
    assert unavailable == {"DDIM CFG++"}
    own_loop_only = {s.name for s in SAMPLERS if s.available and not s.scheduler_class}
    assert own_loop_only == {"DPM fast", "DPM adaptive", "Restart"}


def test_tables_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLERS[0].name = "x"
    with pytest.raises(TypeError):
        SAMPLERS[0].overrides["solver_order"] = 3


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


@pytest.mark.parametrize("spec", [s for s in SAMPLERS if s.usable and s.scheduler_class], ids=lambda s: s.name)
def test_every_available_sampler_builds_with_automatic(spec):
    sampler, schedule = resolve_sampler(spec.name, "Automatic")
    sched = make_scheduler(SD1_CONFIG, sampler, schedule)
    assert type(sched).__name__ == spec.scheduler_class
    assert sched.config.beta_schedule == "scaled_linear"
    assert sched.config.prediction_type == "epsilon"
    sched.set_timesteps(20)
    assert len(sched.timesteps) >= 20
    assert torch.isfinite(torch.as_tensor(sched.timesteps, dtype=torch.float32)).all()


def test_automatic_resolves_to_default_schedule():
    assert resolve_sampler("DPM++ 2M", "Automatic")[1].label == "Karras"
    assert resolve_sampler("DPM++ 2M SDE", None)[1].label == "Exponential"
    assert resolve_sampler("Euler", "Automatic")[1].label == "Automatic"
    assert resolve_sampler("Euler", "Karras")[1].label == "Karras"


def test_karras_sets_flag_and_automatic_is_linspace():
    sched = make_scheduler(SD1_CONFIG, *resolve_sampler("DPM++ 2M", "Automatic"))
    assert sched.config.use_karras_sigmas is True
    assert sched.config.algorithm_type == "dpmsolver++"
    euler = make_scheduler({**SD1_CONFIG, "use_karras_sigmas": True}, *resolve_sampler("Euler", None))
    assert euler.config.timestep_spacing == "linspace"
    assert euler.config.use_karras_sigmas is False
    euler.set_timesteps(20)
    assert float(euler.timesteps[0]) == pytest.approx(999.0)
    assert float(euler.timesteps[-1]) == pytest.approx(0.0)


def test_schedule_overrides_reach_scheduler():
    assert make_scheduler(SD1_CONFIG, *resolve_sampler("Euler", "Exponential")).config.use_exponential_sigmas
    assert make_scheduler(SD1_CONFIG, *resolve_sampler("Euler", "Beta")).config.use_beta_sigmas
    assert make_scheduler(SD1_CONFIG, *resolve_sampler("Euler", "SGM Uniform")).config.timestep_spacing == "trailing"
    ddim_sched = make_scheduler(SD1_CONFIG, *resolve_sampler("Euler", "ddim"))
    assert (ddim_sched.config.timestep_spacing, ddim_sched.config.steps_offset) == ("leading", 1)


def test_sde_variants_and_prediction_type_kept():
    cfg = {**SD1_CONFIG, "prediction_type": "v_prediction"}
    heun = make_scheduler(cfg, *resolve_sampler("DPM++ 2M SDE Heun", None))
    assert (heun.config.algorithm_type, heun.config.solver_type) == ("sde-dpmsolver++", "heun")
    assert heun.config.prediction_type == "v_prediction"
    assert make_scheduler(cfg, *resolve_sampler("DPM++ 3M SDE", None)).config.solver_order == 3


def test_timestep_sampler_uses_a1111_leading_spacing():
    ddim = make_scheduler(SD1_CONFIG, *resolve_sampler("DDIM", "Karras"))
    ddim.set_timesteps(20)
    assert ddim.timesteps.tolist()[-1] == 1
    assert ddim.timesteps.tolist()[0] == 951


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


def test_unavailable_samplers_raise():
    with pytest.raises(InvalidRequestError, match="not implemented"):
        resolve_sampler("DDIM CFG++", None)


@pytest.mark.parametrize(
    ("name", "alias", "schedule", "options"),
    [
        ("DPM fast", "k_dpm_fast", "Automatic", {"uses_ensd": "True"}),
        ("DPM adaptive", "k_dpm_ad", "Automatic", {"uses_ensd": "True"}),
        ("Restart", "restart", "Karras", {"scheduler": "karras", "second_order": "True"}),
    ],
)
def test_own_loop_samplers_resolve_but_have_no_diffusers_scheduler(name, alias, schedule, options):
    sampler, resolved = resolve_sampler(alias, None)
    assert (sampler.name, resolved.label, dict(sampler.options)) == (name, schedule, options)
    assert {"name": name, "aliases": [alias], "options": options} in sampler_list()
    with pytest.raises(InvalidRequestError, match="only the own sampling loop"):
        make_scheduler(SD1_CONFIG, sampler, resolved)


def test_missing_requirement_makes_sampler_unusable(monkeypatch):
    spec = dataclasses.replace(SAMPLERS[1], requires=("no_such_module_xyz",))
    monkeypatch.setattr(samplers, "SAMPLERS", (spec,))
    with pytest.raises(InvalidRequestError, match="needs no_such_module_xyz"):
        resolve_sampler("DPM++ SDE", None)


def test_impossible_combination_raises():
    with pytest.raises(InvalidRequestError, match="'Euler a' cannot use schedule type 'Karras'"):
        make_scheduler(SD1_CONFIG, *resolve_sampler("Euler a", "Karras"))
    with pytest.raises(InvalidRequestError, match="Align Your Steps"):
        make_scheduler(SD1_CONFIG, *resolve_sampler("Euler", "Align Your Steps"))


def test_sampler_list_shape():
    items = sampler_list()
    assert items[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert [i["name"] for i in items] == [n for n in UI_ORDER if n != "DDIM CFG++"]
    assert all(set(i) == {"name", "aliases", "options"} for i in items)


def test_find_schedule_accepts_name_label_alias():
    assert find_schedule("sgm_uniform") is find_schedule("SGM Uniform") is find_schedule("sgmuniform")
    assert find_schedule("nonexistent") is None
    assert len(SCHEDULES) == 12
