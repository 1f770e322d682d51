"""Hyperparameter YAML: resolution order, presets, overrides, safe loading and the shipped files."""

from __future__ import annotations

import doctest
import inspect
from pathlib import Path

import pytest
import yaml

import agents.hyperparams as hyperparams
from agents.algos import get_algo
from agents.hyperparams import (
    HYPERPARAMS_DIR,
    apply_overrides,
    available_algos,
    list_presets,
    load_hyperparams,
    parse_override,
    read_hyperparams_file,
)

ENV = "prunegym/StaticPruning-v0"
LAYERED = """
default:
  a: default
  b: default
  c: default
  d: default
  policy_kwargs: {net_arch: [8], activation_fn: tanh}
prunegym/StaticPruning-v0:
  b: env
  c: env
  d: env
  policy_kwargs: {net_arch: [16]}
prunegym/RuntimePruning-v0:
  b: other-env
flatpreset:
  c: preset
  d: preset
keyed:
  default: {c: keyed-default, e: keyed-default}
  prunegym/StaticPruning-v0: {d: keyed-env}
only_runtime:
  prunegym/RuntimePruning-v0: {c: x}
mixed:
  default: {c: x}
  c: y
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "algo.yml").write_text(LAYERED)
    return tmp_path


def test_resolution_order(folder: Path) -> None:
    hp = load_hyperparams("algo", ENV, preset="flatpreset", overrides=["d=override"], directory=folder)
    assert (hp["a"], hp["b"], hp["c"], hp["d"]) == ("default", "env", "preset", "override")
    # mappings merge key by key: the env entry changes net_arch and keeps the default activation
    assert hp["policy_kwargs"] == {"net_arch": [16], "activation_fn": "tanh"}
    assert load_hyperparams("algo", "prunegym/RuntimePruning-v0", directory=folder)["b"] == "other-env"
    keyed = load_hyperparams("algo", ENV, preset="keyed", directory=folder)
    assert (keyed["c"], keyed["d"], keyed["e"]) == ("keyed-default", "keyed-env", "keyed-default")


def test_env_registered_but_absent_uses_default(folder: Path) -> None:
    hp = load_hyperparams("algo", "CartPole-v1", directory=folder)
    assert hp["b"] == "default"


def test_unknown_algo_env_preset_list_what_exists(folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no hyperparameters for algorithm 'nope'.*files exist for algo"):
        load_hyperparams("nope", ENV, directory=folder)
    with pytest.raises(
        KeyError,
        match=r"unknown env id 'prunegym/StaticPrunin-v0' \(did you mean "
        r"'prunegym/StaticPruning-v0'\?\).*has entries for prunegym/Runtime",
    ):
        load_hyperparams("algo", "prunegym/StaticPrunin-v0", directory=folder)
    with pytest.raises(KeyError, match="unknown preset 'papr' for algo; algo.yml has presets flatpreset, keyed"):
        load_hyperparams("algo", ENV, preset="papr", directory=folder)
    with pytest.raises(ValueError, match="no entry for 'prunegym/StaticPruning-v0' and no 'default:'"):
        load_hyperparams("algo", ENV, preset="only_runtime", directory=folder)
    with pytest.raises(ValueError, match="mixes env-id entries"):
        load_hyperparams("algo", ENV, preset="mixed", directory=folder)
    assert list_presets("algo", folder) == ["flatpreset", "keyed", "mixed", "only_runtime"]


def test_override_values_are_yaml() -> None:
    assert parse_override("learning_rate=1e-4") == (["learning_rate"], 1e-4)
    assert parse_override("learning_rate=lin_3e-4") == (["learning_rate"], "lin_3e-4")
    assert parse_override("policy_kwargs={net_arch: [64, 64]}") == (["policy_kwargs"], {"net_arch": [64, 64]})
    assert parse_override("normalize_advantage=false") == (["normalize_advantage"], False)
    assert parse_override("policy_kwargs.net_arch=[4]") == (["policy_kwargs", "net_arch"], [4])
    assert parse_override("target_kl=") == (["target_kl"], None)
    out = apply_overrides(
        {"policy_kwargs": {"net_arch": [8], "activation_fn": "tanh"}},
        ["policy_kwargs.net_arch=[4]", "gamma=0.9", "gamma=0.8"],
    )
    assert out == {"policy_kwargs": {"net_arch": [4], "activation_fn": "tanh"}, "gamma": 0.8}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("learning_rate", "is not key=value"),
        ("=3", "is not key=value"),
        ("bad key=1", "is not key=value"),
        ("policy_kwargs={net_arch: [64", "not plain YAML.*net_arch: \\[64, 64\\]"),
        ('x=!!python/object/apply:os.system ["echo"]', "not plain YAML.*never evaluated"),
        ("x=!!python/name:os.system", "not plain YAML"),
    ],
)
def test_bad_overrides_are_refused(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_override(text)


def test_override_into_non_mapping() -> None:
    with pytest.raises(ValueError, match="'net_arch' is \\[8\\], not a mapping"):
        apply_overrides({"net_arch": [8]}, ["net_arch.pi=[4]"])
    with pytest.raises(TypeError, match="list of 'key=value' strings"):
        apply_overrides({}, "gamma=0.9")  # type: ignore[arg-type]


def test_files_are_read_with_safe_load_only(tmp_path: Path) -> None:
    (tmp_path / "evil.yml").write_text('default:\n  x: !!python/object/apply:os.system ["echo pwned"]\n')
    with pytest.raises(ValueError, match="not valid YAML"):
        read_hyperparams_file("evil", tmp_path)
    (tmp_path / "flat.yml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        read_hyperparams_file("flat", tmp_path)
    source = inspect.getsource(hyperparams)
    assert "eval(" not in source and "yaml.load(" not in source and "unsafe_load" not in source


def test_scientific_notation_without_dot_is_a_number(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("default:\n  learning_rate: 1e-6\n  n: [3E5, '2e-3']\n  name: e5\n")
    assert yaml.safe_load("x: 1e-6")["x"] == "1e-6"  # what YAML 1.1 alone gives
    hp = load_hyperparams("a", "CartPole-v1", directory=tmp_path)
    assert hp == {"learning_rate": 1e-6, "n": [3e5, 2e-3], "name": "e5"}


# -----------------------------------------------------------------------------------------------------------
# the shipped files
# -----------------------------------------------------------------------------------------------------------


def test_shipped_files() -> None:
    assert {"ppo", "recurrent_ppo", "a2c", "sac", "td3", "ddpg"} <= set(available_algos())
    for algo in available_algos():
        get_algo(algo)  # every file belongs to a registered algorithm
        data = read_hyperparams_file(algo)
        assert "default" in data, algo
        for env_id in ("prunegym/RuntimePruning-v0", "prunegym/StaticPruning-v0"):
            assert env_id in data, (algo, env_id)
            assert load_hyperparams(algo, env_id)["n_timesteps"] > 0


def test_paper_preset_matches_methods() -> None:
    hp = load_hyperparams("recurrent_ppo", "prunegym/RuntimePruning-v0", preset="paper")
    expected = {
        "gamma": 0.999,
        "gae_lambda": 0.95,
        "clip_range": 0.2,
        "ent_coef": 0.0,
        "learning_rate": 1e-6,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "n_epochs": 1,
        "batch_size": 64,
        "normalize_advantage": True,
    }
    assert {k: hp[k] for k in expected} == expected
    assert hp["policy_kwargs"]["lstm_hidden_size"] == 128 and hp["policy"] == "BudgetResidualLstmPolicy"
    assert list_presets("recurrent_ppo") == ["paper"]
    text = (HYPERPARAMS_DIR / "recurrent_ppo.yml").read_text()
    assert "Chen, Chen & Pan" in text and "residual on the budget" in text


def test_module_doctest() -> None:
    result = doctest.testmod(hyperparams)
    assert result.attempted > 0 and result.failed == 0
