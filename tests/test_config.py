from pathlib import Path

import pytest

from gr_train.config import ConfigError, RunConfig, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_defaults_overrides_and_types(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("gumbel:\n  k: 3\noptim:\n  lr: 1\n")
    cfg = load_config(f, ["gumbel.kappa=10", "gumbel.tau_end=0.1", "reader.model_config={d_model: 64}"])
    assert cfg.gumbel.k == 3 and cfg.gumbel.kappa == 10.0 and isinstance(cfg.gumbel.kappa, float)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int accepted for float
    assert cfg.gumbel.tau_end == 0.1 and cfg.reader.model_config == {"d_model": 64}
    assert cfg.gumbel.tau == 0.5  # untouched default


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["gumbel.kappa=7", "synthetic.curriculum=[[10, 1]]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "text, match",
    [
        ("gumbel:\n  kapa: 1\n", r"x.yaml: unknown key 'gumbel.kapa'"),
        ("gumble:\n  k: 1\n", r"x.yaml: unknown section 'gumble'"),
        ("gumbel:\n  k: two\n", r"x.yaml: gumbel.k: expected an integer, got 'two'"),
        ("gumbel:\n  noise: 1\n", r"x.yaml: gumbel.noise: expected true/false"),
        ("gumbel:\n  k: 0\n", r"gumbel.k: must be >= 1"),
        ("reader:\n  kind: bart\n", r"reader.kind: unknown 'bart'"),
        ("gumbel: [1, 2]\n", r"section 'gumbel' must be a mapping"),
        ("gumbel: {k: 1\n", r"x.yaml: not valid YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, match):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f)


def test_bad_overrides():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["kappa=1"])
    with pytest.raises(ConfigError, match=r"override 'gumbel.kappa=x': gumbel.kappa: expected float"):
        load_config(None, ["gumbel.kappa=x"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent.yaml")
