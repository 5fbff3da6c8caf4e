"""Building a run's models from its config (gr_train/models.py)."""

from __future__ import annotations

from test_train import tiny_cfg


def test_build_models_without_a_runtime_places_both_on_run_device(tmp_path):
    """Evaluation and reports build their models without a runtime: they go to run.device (the meta device stands
    in for a GPU), where evaluate then sends its batches (batching.module_device)."""
    from gr_train.models import build_models

    reader, reranker = build_models(tiny_cfg(tmp_path, "run.device=meta"))
    for module in (reranker, reader):
        assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}
