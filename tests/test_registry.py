"""The registry, the config dataclasses and plugins."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from alignlab.errors import ConfigError, PluginError, UnknownObjectiveError
from alignlab.objectives import (
    LossOutput,
    Needs,
    ObjectiveConfig,
    get_objective,
    knob,
    list_objectives,
    register_objective,
)
from alignlab.plugins import load_plugin
from alignlab.schema import Config

BUILTINS = [
    "best_of_n",
    "beta_dpo",
    "cdpo",
    "dpo",
    "dpop",
    "grpo",
    "ipo",
    "iterative_dpo",
    "kto",
    "madpo",
    "odpo",
    "online_dpo",
    "orpo",
    "ppo",
    "rdpo",
    "rloo",
    "sft",
    "simpo",
    "slic",
    "unlikelihood",
]


def test_every_builtin_is_registered():
    names = [o.name for o in list_objectives()]
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_is_complete(name):
    """Documented knobs with defaults, a citation naming a year, needs, and a one-line summary."""
    o = get_objective(name)
    assert isinstance(o.needs, Needs)
    assert any(str(y) in o.citation for y in range(2016, 2026)), o.citation
    assert o.summary
    for f in dataclasses.fields(o.config_cls):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
    o.config()  # the defaults are valid


def test_needs_are_declared_not_inferred_from_names():
    assert not get_objective("simpo").needs.reference and not get_objective("orpo").needs.reference
    assert get_objective("dpo").needs.reference and get_objective("kto").needs.data == "unpaired"
    assert get_objective("ppo").needs.data == "online"
    assert get_objective("unlikelihood").needs.token_level


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownObjectiveError, match="did you mean 'dpo'"):
        get_objective("dpoo")
    with pytest.raises(UnknownObjectiveError, match="did you mean 'simpo'"):
        get_objective("simpó")
    with pytest.raises(UnknownObjectiveError) as err:
        get_objective("zzzzzz")
    assert "did you mean" not in str(err.value) and "registered:" in str(err.value)


def test_config_validation_names_the_key():
    dpo = get_objective("dpo")
    with pytest.raises(ConfigError, match=r"beta: must be > 0"):
        dpo.config(beta=0.0)
    with pytest.raises(ConfigError, match=r"beta: expected float, got 'big'"):
        dpo.config(beta="big")
    with pytest.raises(ConfigError, match=r"did you mean 'beta'"):
        dpo.config(betta=0.1)
    with pytest.raises(ConfigError, match=r"epsilon: must be < 0.5"):
        get_objective("cdpo").config(epsilon=0.5)
    with pytest.raises(ConfigError, match=r"length_normalized: expected bool, got 1"):
        get_objective("ipo").config(length_normalized=1)
    with pytest.raises(ConfigError, match=r"aggregation: expected 'token-mean' \| 'sequence-mean'"):
        get_objective("ppo").config(aggregation="mean")
    with pytest.raises(ConfigError) as err:
        get_objective("dpo").config_cls.from_dict({"beta": -1}, "exp.yaml", "objective.")
    assert str(err.value) == "exp.yaml: objective.beta: must be > 0, got -1"


def test_ints_are_accepted_as_floats_but_bools_are_not():
    assert get_objective("dpo").config(beta=1).beta == 1.0
    assert isinstance(get_objective("dpo").config(beta=1).beta, float)
    with pytest.raises(ConfigError):
        get_objective("dpo").config(beta=True)


def test_configs_are_frozen():
    cfg = get_objective("dpo").config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 2.0  # type: ignore[misc]


def test_registering_a_taken_name_with_another_function_is_an_error():
    @dataclasses.dataclass(frozen=True)
    class C(ObjectiveConfig):
        pass

    with pytest.raises(ValueError, match="already registered"):

        @register_objective("dpo", config=C, needs=Needs(reference=False, data="paired"), citation="x 2024")
        def other(batch, cfg):  # pragma: no cover - never called
            return LossOutput(batch)


def test_a_config_must_be_an_objective_config():
    with pytest.raises(TypeError, match="ObjectiveConfig"):
        register_objective("bad-config", config=dict, needs=Needs(reference=False, data="paired"), citation="")  # type: ignore[arg-type]


PLUGIN = textwrap.dedent(
    '''
    from dataclasses import dataclass
    from alignlab.objectives import LossOutput, Needs, ObjectiveConfig, knob, register_objective

    @dataclass(frozen=True)
    class MarginConfig(ObjectiveConfig):
        scale: float = knob(1.0, "a scale", gt=0)

    @register_objective("test_margin", config=MarginConfig, needs=Needs(reference=False, data="paired"),
                        citation="nobody 2024")
    def margin_loss(batch, cfg):
        """−scale·(log π(y_w) − log π(y_l))."""
        return LossOutput(-cfg.scale * (batch.policy_chosen_logps - batch.policy_rejected_logps))
    '''
)


def test_plugin_file_joins_the_registry(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    load_plugin("my_plugin.py", base_dir=tmp_path)
    load_plugin("my_plugin.py", base_dir=tmp_path)  # a second import is harmless
    o = get_objective("test_margin")
    assert o.config(scale=2.0).scale == 2.0
    assert "test_margin" in [x.name for x in list_objectives()]


def test_plugin_module_by_dotted_name(tmp_path, monkeypatch):
    pkg = tmp_path / "mylab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "losses.py").write_text(PLUGIN.replace("test_margin", "test_margin_module"))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugin("mylab.losses")
    assert get_objective("test_margin_module").needs.reference is False


def test_plugin_errors_say_what_and_where(tmp_path):
    with pytest.raises(PluginError, match=r"exp.yaml: plugins: no such file 'nope.py' \(looked for .*nope.py\)"):
        load_plugin("nope.py", base_dir=tmp_path, source="exp.yaml")
    with pytest.raises(PluginError, match="no module named 'not_a_module_xyz'"):
        load_plugin("not_a_module_xyz")
    (tmp_path / "broken.py").write_text("import definitely_missing_package_xyz\n")
    with pytest.raises(PluginError, match=r"importing .*broken\.py failed: ModuleNotFoundError"):
        load_plugin("broken.py", base_dir=tmp_path)


def test_knob_listing():
    rows = get_objective("ipo").config_cls.knobs()
    assert [r[0] for r in rows] == ["tau", "length_normalized"]
    assert rows[0][1:3] == ("float", 0.1)


@dataclasses.dataclass(frozen=True)
class Inner(Config):
    x: int = knob(1, "x", ge=0)


@dataclasses.dataclass(frozen=True)
class Outer(Config):
    name: str = knob(help="required")
    inner: Inner = knob(default_factory=Inner, help="nested")


def test_required_knob_and_nested_config():
    assert Outer.from_dict({"name": "a", "inner": {"x": 3}}).inner.x == 3
    with pytest.raises(ConfigError, match=r"f.yaml: name: required key is missing"):
        Outer.from_dict({}, "f.yaml")
    with pytest.raises(ConfigError, match=r"f.yaml: inner.x: must be >= 0, got -1"):
        Outer.from_dict({"name": "a", "inner": {"x": -1}}, "f.yaml")
    with pytest.raises(ConfigError, match=r"f.yaml: inner.xx: unknown key; did you mean 'x'\?"):
        Outer.from_dict({"name": "a", "inner": {"xx": 1}}, "f.yaml")
