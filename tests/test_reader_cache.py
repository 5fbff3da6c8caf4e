"""Passage states on disk (reader_cache.py, objective.passage_state_dir): a new process reads back exactly what was
encoded, retrained weights in the same folder miss, training gives the same losses as without the cache, and a
damaged or foreign file is refused with its name."""

import json

import pytest
import torch
from safetensors.torch import save_file

from gr_train import batching, reader_cache, train
from gr_train.config import ConfigError, RunConfig, validate
from gr_train.data import Passage, Record
from gr_train.reader_tuning import save_reader
from test_reader import FAMILIES, PASSAGES, QUESTIONS, TARGETS, make_reader
from test_train import tiny_cfg


@pytest.fixture(autouse=True)
def _fresh_cache():
    reader_cache.clear()
    yield
    reader_cache.clear()


def _records() -> list[Record]:
    return [Record(f"q{i}", QUESTIONS[i], [TARGETS[i]], [Passage(t, x, j == 0) for j, (t, x) in enumerate(PASSAGES[i])])
            for i in range(2)]


def _disk_cfg(tmp_path) -> RunConfig:
    cfg = RunConfig()
    cfg.objective.cache_passage_states = True
    cfg.objective.passage_state_dir = str(tmp_path / "states")
    return cfg


def _tensors(states) -> list[torch.Tensor]:
    out = []
    reader_cache._map(states, lambda t: out.append(t) or t)
    return out


@pytest.mark.parametrize("family", ["fid_t5", "llama"])
def test_states_on_disk_are_read_back_exactly_in_a_new_process(family, tmp_path, monkeypatch):
    reader = make_reader(family)
    cfg = _disk_cfg(tmp_path)
    records = _records()
    batching.passage_states(batching.collate(records, 3, None, reader), reader, cfg)  # encodes, writes
    assert len(list((tmp_path / "states").glob("*.safetensors"))) == 2
    assert not list((tmp_path / "states").glob(".*"))  # no temporary file left behind
    assert not reader_cache._STATES  # nothing kept in memory
    reversed_batch = batching.collate(records[::-1], 3, None, reader)
    encoded = reader.encode_passages(reversed_batch.reader_inputs)
    reader_cache.clear()  # as a new process would start
    monkeypatch.setattr(reader, "encode_passages", lambda inputs: pytest.fail("encoded again"))
    loaded = batching.passage_states(reversed_batch, reader, cfg)
    assert type(loaded) is type(encoded)
    for a, b in zip(_tensors(loaded), _tensors(encoded), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    log_M = torch.log(torch.tensor([[0.9, 0.2, 0.5], [0.1, 1.0, 0.3]]))
    inputs = reversed_batch.reader_inputs
    torch.testing.assert_close(reader.answer_loss(loaded, inputs, log_M), reader.answer_loss(encoded, inputs, log_M),
                               rtol=0, atol=1e-6)


def test_retrained_weights_in_the_same_folder_miss_the_disk_cache(tmp_path):
    folder = tmp_path / "reader"
    save_reader(make_reader("llama"), folder)
    cfg = _disk_cfg(tmp_path)
    cfg.reader.kind, cfg.reader.name_or_path, cfg.reader.passage_max_tokens = "causal_lm", str(folder), 72
    cfg.reader.attn_implementation = "eager"
    calls = []

    def states(reader):
        batch = batching.collate(_records(), 3, None, reader)
        return reader_cache.cached_states(batch, cfg, lambda: calls.append(1) or reader.encode_passages(
            batch.reader_inputs))

    from gr_train.models import build_reader

    first = build_reader(cfg.reader)
    before = states(first)
    reader_cache.clear()
    states(build_reader(cfg.reader))  # same weights, new process: read from disk
    assert len(calls) == 1
    with torch.no_grad():
        for p in first.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_reader(first, folder)  # retrained in place: same path, same config
    reader_cache.clear()
    after = states(build_reader(cfg.reader))
    assert len(calls) == 2 and len(list((tmp_path / "states").glob("*.safetensors"))) == 4
    assert (_tensors(after)[0] - _tensors(before)[0]).abs().max() > 1e-3  # the stale states would have been wrong


def test_training_with_states_on_disk_gives_the_losses_of_training_without_them(tmp_path, monkeypatch):
    """G-Rerank, 2 epochs over 8 questions: the second epoch reads every question's states from disk, and the
    run's logged losses are those of a run that encodes every step."""
    common = ["train.max_steps=4", "train.micro_batch_size=4", "synthetic.n_train=8", "train.eval_every_steps=0"]
    plain = train.main(tiny_cfg(tmp_path, "run.run_dir=" + str(tmp_path / "plain"), *common), resume=False)
    cfg = tiny_cfg(tmp_path, "run.run_dir=" + str(tmp_path / "disk"), *common, "objective.cache_passage_states=true",
                   f"objective.passage_state_dir={tmp_path / 'states'}")
    loaded = []
    real_load = reader_cache.load_states
    monkeypatch.setattr(reader_cache, "load_states", lambda path: loaded.append(path) or real_load(path))
    disk = train.main(cfg, resume=False)
    assert len(list((tmp_path / "states").glob("*.safetensors"))) >= 8
    assert len(loaded) >= 8  # the second epoch's 8 question visits read their states from disk
    assert disk["last"]["train/loss"] == pytest.approx(plain["last"]["train/loss"], abs=1e-5)
    assert disk["last"]["train/loss"] != pytest.approx(0.0)


def test_a_damaged_or_foreign_state_file_is_refused_with_its_name(tmp_path):
    good = tmp_path / "good.safetensors"
    reader_cache.save_states((torch.ones(1, 2), [torch.zeros(1, 3, dtype=torch.bool)]), good)
    loaded = reader_cache.load_states(good)
    assert isinstance(loaded, tuple) and torch.equal(loaded[0], torch.ones(1, 2)) and loaded[1][0].dtype == torch.bool
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.safetensors: not a passage-state file"):
        reader_cache.load_states(cut)
    foreign = tmp_path / "foreign.safetensors"
    tree = {"class": "os.system", "fields": {"command": {"tensor": 0}}}
    save_file({"0": torch.zeros(1)}, str(foreign), metadata={"tree": json.dumps(tree)})
    with pytest.raises(ValueError, match=r"foreign.safetensors: field states: not a tensor.*os\.system"):
        reader_cache.load_states(foreign)
    fields = tmp_path / "fields.safetensors"
    tree = {"class": "PassageCache", "fields": {"keys": {"tensor": 0}}}
    save_file({"0": torch.zeros(1)}, str(fields), metadata={"tree": json.dumps(tree)})
    with pytest.raises(ValueError, match="fields.safetensors: field states: PassageCache needs fields"):
        reader_cache.load_states(fields)
    with pytest.raises(TypeError, match="cannot store passage states of type dict"):
        reader_cache.save_states({"a": torch.ones(1)}, tmp_path / "dict.safetensors")


def test_a_failed_state_write_leaves_no_file(tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        reader_cache.save_states((torch.ones(1, 2),), tmp_path / "q.safetensors")
    assert list(tmp_path.iterdir()) == [], "a half-written state file would keep a full disk full"


def test_a_state_folder_without_the_cache_is_a_config_error():
    cfg = RunConfig()
    cfg.objective.passage_state_dir = "states"
    with pytest.raises(ConfigError, match="objective.passage_state_dir=states: needs objective.cache_passage_states"):
        validate(cfg)


def test_caching_the_states_of_a_trainable_reader_is_a_config_error():
    cfg = RunConfig()
    cfg.objective.cache_passage_states, cfg.reader.trainable = True, True
    with pytest.raises(ConfigError, match="objective.cache_passage_states: the reader is trainable"):
        validate(cfg)


# The cache key covers every setting that changes what is cached (issue 30, item 6) ------------------------------


def _fp(cfg) -> str:
    return reader_cache.reader_fingerprint(cfg)


def test_the_key_covers_the_resolved_dtype_and_every_setting_that_changes_the_states(tmp_path):
    base = RunConfig()
    base.reader.kind, base.reader.name_or_path = "causal_lm", str(tmp_path / "reader")
    save_reader(make_reader("llama"), tmp_path / "reader")
    # the dtype as resolved: reader.dtype, else runtime.precision (ZeRO-3 bf16 with reader.dtype unset)
    bf16 = RunConfig()
    bf16.reader = base.reader.__class__(**vars(base.reader))
    bf16.runtime.engine, bf16.runtime.precision = "deepspeed", "bf16"
    assert _fp(bf16) != _fp(base)
    explicit = RunConfig(reader=bf16.reader.__class__(**{**vars(bf16.reader), "dtype": "bf16"}), runtime=bf16.runtime)
    assert _fp(explicit) == _fp(bf16)  # the same reader in the same dtype shares its states
    changed = {
        "reader.dtype": ("dtype", "fp16"), "reader.passage_max_tokens": ("passage_max_tokens", 64),
        "reader.answer_max_tokens": ("answer_max_tokens", 4), "reader.prompt_max_tokens": ("prompt_max_tokens", 16),
        "reader.prompt": ("prompt", "chat"), "reader.instruction": ("instruction", "Answer."),
        "reader.answer_eos": ("answer_eos", False), "reader.attn_implementation": ("attn_implementation", "sdpa"),
        "reader.tokenizer_path": ("tokenizer_path", str(tmp_path / "reader")),
        "reader.name_or_path": ("name_or_path", str(tmp_path / "other")),
    }
    save_reader(make_reader("llama", passage_max_tokens=60), tmp_path / "other")
    seen = {_fp(base)}
    for key, (field, value) in changed.items():
        cfg = RunConfig(reader=base.reader.__class__(**{**vars(base.reader), field: value}))
        assert _fp(cfg) not in seen, key
        seen.add(_fp(cfg))
    # a random reader: its seed, its model_config; a demo reader from scratch: the vocabulary's synthetic section
    random_reader = RunConfig()
    random_reader.reader.random_init = True
    for edit in (lambda c: setattr(c.run, "seed", 1), lambda c: c.reader.model_config.update(d_model=16),
                 lambda c: setattr(c.synthetic, "n_chains", c.synthetic.n_chains + 1)):
        cfg = RunConfig()
        cfg.reader.random_init = True
        edit(cfg)
        assert _fp(cfg) != _fp(random_reader)
    # init_from: the folder's contents, not only its name
    init = tmp_path / "init"
    init.mkdir()
    (init / "model.safetensors").write_bytes(b"a")
    cfg = RunConfig()
    cfg.reader.init_from = str(init)
    before = _fp(cfg)
    (init / "model.safetensors").write_bytes(b"bb")
    assert _fp(cfg) != before
    # the question key: the device the reader runs on and the padded n
    reader = make_reader("llama")
    keys3 = reader_cache.question_keys(batching.collate(_records(), 3, None, reader), base, "states")
    keys2 = reader_cache.question_keys(batching.collate(_records(), 2, None, reader), base, "states")
    assert keys3 != keys2 and all(k[2] == "cpu" for k in keys3)


def test_a_bf16_run_never_reads_the_states_an_fp32_run_left_in_the_folder(tmp_path):
    """objective.passage_state_dir filled by an fp32 run of a reader, then used by a ZeRO-3 bf16 run of the same
    reader (reader.dtype unset, runtime.precision=bf16): it encodes its own bf16 states, and its answer loss is the
    one without the cache (it used to read the fp32 files and crash: expected Float but found BFloat16)."""
    import dataclasses

    from gr_train.models import build_reader

    save_reader(make_reader("llama"), tmp_path / "reader")
    fp32 = _disk_cfg(tmp_path)
    fp32.reader.kind, fp32.reader.name_or_path = "causal_lm", str(tmp_path / "reader")
    bf16 = _disk_cfg(tmp_path)
    bf16.reader = dataclasses.replace(fp32.reader)
    bf16.runtime.engine, bf16.runtime.precision = "deepspeed", "bf16"
    calls = []

    def states(cfg, dtype):
        reader = build_reader(dataclasses.replace(cfg.reader, dtype=dtype))
        batch = batching.collate(_records(), 3, None, reader)
        got = reader_cache.cached_states(batch, cfg, lambda: calls.append(dtype) or reader.encode_passages(
            batch.reader_inputs))
        log_M = torch.zeros(2, 3)
        return got, reader.answer_loss(got, batch.reader_inputs, log_M), reader.answer_loss(
            reader.encode_passages(batch.reader_inputs), batch.reader_inputs, log_M)

    states(fp32, "fp32")
    reader_cache.clear()
    got, cached_loss, plain_loss = states(bf16, "bf16")
    assert calls == ["fp32", "bf16"]  # the bf16 run encoded its own states
    assert {t.dtype for t in _tensors(got) if t.is_floating_point()} == {torch.bfloat16}
    assert torch.equal(cached_loss, plain_loss)
    assert len(list((tmp_path / "states").glob("*.safetensors"))) == 4
    reader_cache.clear()
    states(bf16, "bf16")  # and reads them back the next time
    assert calls == ["fp32", "bf16"]


def test_the_baselines_target_cache_misses_for_another_dtype_or_setting():
    """The in-memory target cache (objective.cache_reader_targets) has the same key: a bf16 run of the reader, or
    another passage length, computes its own targets."""
    reader = make_reader("llama")
    batch = batching.collate(_records(), 3, None, reader)
    fp32, bf16, longer = RunConfig(), RunConfig(), RunConfig()
    bf16.runtime.engine, bf16.runtime.precision = "deepspeed", "bf16"
    longer.reader.passage_max_tokens = 64
    got = [reader_cache.cached_targets(batch, cfg, "single", lambda v=v: torch.full((2, 3), v))
           for v, cfg in ((1.0, fp32), (2.0, bf16), (3.0, longer), (4.0, fp32))]
    assert [g[0, 0].item() for g in got] == [1.0, 2.0, 3.0, 1.0]
