"""Checkpoint reading is safe: engine.pt is read with torch.load(weights_only=True), so a checkpoint whose
engine.pt holds a pickle that would run code on load is refused before anything is applied."""

import os
from pathlib import Path

import pytest
import torch

from gr_train import checkpoint, train
from tests.test_train import tiny_cfg


class RunsCodeOnLoad:
    """Unpickling this calls os.mkdir(marker): a visible stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_engine_state_holding_a_code_running_pickle_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.max_steps=2")
    recipe = train.setup(cfg, resume=False)
    folder = train.save(recipe, "step-000001", 1)
    weights = {k: v.clone() for k, v in recipe.reranker.state_dict().items()}
    marker = tmp_path / "pwned"
    torch.save({"optimizer": RunsCodeOnLoad(str(marker)), "scheduler": {}}, folder / "engine.pt")

    with torch.no_grad():
        for p in recipe.reranker.parameters():
            p.add_(1.0)
    with pytest.raises(ValueError, match=r"engine\.pt: refused.*weights_only=True"):
        checkpoint.load_checkpoint(folder, recipe.runtime)
    assert not marker.exists()  # the payload never ran
    # nothing was applied: the weights are still the modified ones, not the checkpoint's
    state = recipe.reranker.state_dict()
    assert not any(torch.equal(v, weights[k]) for k, v in state.items() if v.is_floating_point())
    with pytest.raises(ValueError, match="refused"):
        train.setup(cfg, resume=True)
    assert not marker.exists()


def test_engine_state_round_trips_under_weights_only(tmp_path):
    cfg = tiny_cfg(tmp_path)
    out = train.main(cfg, resume=False)
    state = checkpoint.load_engine_state(Path(out["final"]) / "engine.pt")
    assert state["optimizer"]["step"] == cfg.train.max_steps
    assert state["scheduler"]["last_epoch"] == cfg.train.max_steps
    names = {n for n, p in out["recipe"].reranker.named_parameters() if p.requires_grad}
    assert set(state["optimizer"]["exp_avg"]) == names
