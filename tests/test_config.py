import typing
from pathlib import Path

import pytest

from gr_train.config import ConfigError, GumbelSection, RunConfig, load_config, save_config, validate

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
        ("reader:\n  kind: bart\n", r"x.yaml: reader.kind: unknown 'bart' \(demo_fid \| fid_t5 \| causal_lm\)"),
        ("gumbel:\n  schedule: step\n", r"x.yaml: gumbel.schedule: unknown 'step' \(linear \| cosine \| exponential\)"),
        ("runtime:\n  precision: 16\n", r"x.yaml: runtime.precision: unknown 16 \(fp32 \| bf16 \| fp16\)"),
        ("gumbel: [1, 2]\n", r"section 'gumbel' must be a mapping"),
        ("gumbel: {k: 1\n", r"x.yaml: not valid YAML"),
        ("run:\n  device: gpu\n", r"run.device: 'gpu' is not a torch device"),
        ("gumbel:\n  kl_coef: -0.1\n", r"gumbel.kl_coef: must be >= 0"),
        ("gumbel:\n  kl_reference: start\n", r"gumbel.kl_reference: conditional or pointwise, got 'start'"),
        ("gumbel:\n  k_curriculum: [[100, 0]]\n",
         r"gumbel.k_curriculum\[0\]: expected \[steps >= 0, k >= 1\], got \[100, 0\]"),
        ("gumbel:\n  k_curriculum: [[100, 6], [50]]\n", r"gumbel.k_curriculum\[1\]: expected \[steps >= 0, k >= 1\]"),
        ("gumbel:\n  kl_coef: 0.1\n  estimator: straight_through\n",
         r"gumbel.kl_coef: the KL penalty is of the sequential path's step policies: set gumbel.estimator="
         r"score_function or reranker.conditional=true"),
        ("runtime:\n  max_failures: -2\n", r"runtime.max_failures: must be >= 0, or -1"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, match):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f)


def test_reader_init_from_is_refused_where_it_cannot_work():
    """reader.init_from copies a demo reader folder into a demo reader built from model_config; under ZeRO-3 the
    reader is partitioned as it is built (the copy used to fail on an empty slice's shape), and an HF reader
    would ignore it."""
    zero3 = ["reader.init_from=gr_train/assets/demo_reader", "runtime.engine=deepspeed"]
    with pytest.raises(ConfigError, match=r"reader.init_from: .*ZeRO-3.*runtime.partition_reader=false"):
        load_config(None, zero3)
    assert load_config(None, [*zero3, "runtime.partition_reader=false"]).reader.init_from  # not partitioned: works
    with pytest.raises(ConfigError, match=r"reader.init_from: for reader.kind=demo_fid .*got causal_lm"):
        load_config(None, ["reader.kind=causal_lm", "reader.init_from=x"])


def test_bad_overrides():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["kappa=1"])
    with pytest.raises(ConfigError, match=r"override 'gumbel.kappa=x': gumbel.kappa: expected float"):
        load_config(None, ["gumbel.kappa=x"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent.yaml")


def test_literal_keys_are_checked_when_set_in_code_too():
    cfg = load_config()
    cfg.objective.name = "pdsit"  # e.g. compare sets the name directly, not through an override
    with pytest.raises(ConfigError, match=r"^objective.name: unknown 'pdsit' \(gumbel \| emdr \|"):
        validate(cfg)


def test_every_registry_matches_its_config_literal():
    """The allowed values of a config key are its Literal type; each registry the key selects from has exactly
    those keys (adding an objective, reader family or reranker kind fails here until both agree)."""
    from gr_train import gumbel, models, objectives, reranker
    from gr_train.config import Estimator, ObjectiveName, ReaderKind, RerankerKind

    assert list(objectives.OBJECTIVES) == list(typing.get_args(ObjectiveName))
    assert list(models.READERS) == list(typing.get_args(ReaderKind))
    assert list(reranker.RERANKERS) == list(typing.get_args(RerankerKind))
    assert list(gumbel.ESTIMATORS) == list(typing.get_args(Estimator))
    from gr_train.export import ESTIMATOR_CARD

    assert list(ESTIMATOR_CARD) == list(gumbel.ESTIMATORS)
    hints = typing.get_type_hints(GumbelSection)
    for schedule in typing.get_args(hints["schedule"]):  # every allowed schedule is one gumbel.py implements
        assert gumbel.schedule_value(1.0, 0.5, 5, 10, schedule) < 1.0


def test_derived_values_are_defined_once():
    cfg = load_config(None, ["train.micro_batch_size=3", "train.grad_accum_steps=2", "gumbel.k=4"])
    assert cfg.global_batch(world_size=5) == 30
    assert cfg.reader_k() == 4
    cfg.eval.reader_k = 2
    assert cfg.reader_k() == 2
