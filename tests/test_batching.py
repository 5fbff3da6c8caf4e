"""Micro-batches (gr_train/batching.py): collate onto a device, and the reader's passage states for a batch from
the per-question cache (objective.cache_passage_states)."""

import pytest
import torch
from test_reader import PASSAGES, QUESTIONS, TARGETS, make_reader
from test_train import tiny_cfg

from gr_train import batching, models, reader_cache
from gr_train.data import Passage, Record


@pytest.fixture(autouse=True)
def _fresh_cache():
    reader_cache.clear()
    yield
    reader_cache.clear()


@pytest.mark.parametrize("family", ["fid_t5", "llama"])
def test_cached_passage_states_are_reused_and_give_the_same_loss(family, monkeypatch):
    from gr_train.config import RunConfig

    reader = make_reader(family)
    cfg = RunConfig()
    cfg.objective.cache_passage_states = True
    records = [Record(f"q{i}", QUESTIONS[i], [TARGETS[i]], [Passage(t, x, j == 0) for j, (t, x) in
                                                           enumerate(PASSAGES[i])]) for i in range(2)]
    batching.passage_states(batching.collate(records, 3, None, reader), reader, cfg)  # fills the cache
    batch = batching.collate(records[::-1], 3, None, reader)
    direct = reader.answer_loss(reader.encode_passages(batch.reader_inputs), batch.reader_inputs, torch.zeros(2, 3))
    log_M = torch.log(torch.tensor([[0.9, 0.2, 0.5], [0.1, 1.0, 0.3]]))
    alone = torch.stack([_loss_alone(reader, records[1], log_M[0]), _loss_alone(reader, records[0], log_M[1])])
    monkeypatch.setattr(reader, "encode_passages", lambda inputs: pytest.fail("encoded again"))
    cached = batching.passage_states(batch, reader, cfg)
    assert torch.allclose(reader.answer_loss(cached, batch.reader_inputs, log_M), alone, atol=1e-5)
    assert (alone - reader.answer_loss(cached, batch.reader_inputs, torch.zeros(2, 3))).abs().max() > 1e-4
    assert torch.allclose(reader.answer_loss(cached, batch.reader_inputs, torch.zeros(2, 3)), direct, atol=1e-5)


def _loss_alone(reader, record, log_m):
    inputs = reader.tokenize([record.question], [[(c.title, c.text) for c in record.ctxs]], [record.target_text])
    return reader.answer_loss(reader.encode_passages(inputs), inputs, log_m[None])[0]


def test_collate_puts_every_tensor_of_the_batch_on_the_requested_device(tmp_path):
    """The training recipe collates on the CPU and hands the batch to the runtime's device: every tensor moves,
    nothing else changes (the meta device stands in for an accelerator)."""
    from gr_train.batching import collate

    reader, reranker = models.build_models(tiny_cfg(tmp_path))
    records = [Record(f"q{i}", QUESTIONS[i], [TARGETS[i]], [Passage(t, x, j == 0) for j, (t, x) in
                                                           enumerate(PASSAGES[i])]) for i in range(2)]
    cpu = collate(records, 3, reranker, reader)
    meta = collate(records, 3, reranker, reader, device="meta")
    leaves = [meta.valid, meta.gold, *meta.reranker_inputs.values(), *meta.reader_inputs.values()]
    assert all(t.device.type == "meta" for t in leaves if torch.is_tensor(t))
    assert meta.reranker_inputs.keys() == cpu.reranker_inputs.keys()
    assert meta.reader_inputs.keys() == cpu.reader_inputs.keys()
    assert all(m.shape == c.shape for m, c in zip(meta.reader_inputs.values(), cpu.reader_inputs.values())
               if torch.is_tensor(c))
