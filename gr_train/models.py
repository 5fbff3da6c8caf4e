"""Building a run's models from its config: the frozen (or pre-trained) reader and the reranker.

Every command that needs models builds them here, so that they come out the same everywhere: the training recipe
(train.setup, inside the runtime's partitioned_init), `gr-train evaluate`, compare's untrained reference and
ray_jobs/evaluate.py. The Ray Data tokenizers of ray_jobs/preprocess.py build the same models' inputs alone
(build_inputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from gr_train import synthetic
from gr_train.config import ReaderSection, RunConfig
from gr_train.demo_reader import DemoFiDReader
from gr_train.inputs import RerankerInputs
from gr_train.objectives import OBJECTIVES
from gr_train.reader import CausalLMReader, FiDT5Reader, Reader
from gr_train.reader_tuning import make_trainable
from gr_train.reranker import Reranker, build_reranker, build_reranker_inputs

# reader.kind → reader family; `Family.build(cfg.reader, tokenizer)` loads it from reader.name_or_path or builds
# it from reader.model_config.
READERS: dict[str, type[Reader]] = {"demo_fid": DemoFiDReader, "fid_t5": FiDT5Reader, "causal_lm": CausalLMReader}


def _family(cfg: ReaderSection) -> type[Reader]:
    if cfg.kind not in READERS:
        raise ValueError(f"reader.kind: unknown '{cfg.kind}' ({' | '.join(READERS)})")
    return READERS[cfg.kind]


def build_reader(cfg: ReaderSection, tokenizer=None) -> Reader:
    """Reader from `cfg` (config.ReaderSection), frozen (requires_grad False, eval mode) unless cfg.trainable (then
    reader_tuning.make_trainable picks the trainable parameters).
    Raises ValueError naming reader.kind when it is not a key of READERS."""
    reader = _family(cfg).build(cfg, tokenizer)
    reader.requires_grad_(bool(cfg.trainable))
    if cfg.trainable:
        make_trainable(reader, cfg)  # all parameters, the top reader.train_layers, or LoRA (reader.lora_rank)
    else:
        reader.eval()
    return reader


def _demo_tokenizer(cfg: RunConfig):
    """The demo's word-level tokenizer when no model names one (the reader's and the tiny reranker's), else None."""
    if cfg.reader.kind == "demo_fid" and not cfg.reader.name_or_path:
        return synthetic.build_tokenizer(cfg.synthetic)
    return None


def _reranker_tokenizer(cfg: RunConfig, reader_tokenizer):
    """The tiny demo reranker shares the reader's locally built vocabulary when no path names its own."""
    return reader_tokenizer if not cfg.reranker.name_or_path and not cfg.reranker.tokenizer_path else None


def _trains_reranker(cfg: RunConfig) -> bool:
    return OBJECTIVES[cfg.objective.name].trains == "reranker"


def build_models(cfg: RunConfig, runtime=None) -> tuple[Reader, Reranker | None]:
    """(reader, reranker or None when the objective trains the reader alone: objective.name=reader). The demo's
    word-level tokenizer is built when no model names one. With a runtime, the reader is built inside its
    partitioned_init() (ZeRO-3: no rank holds the whole reader) and `runtime.prepare` places both; without one
    (evaluation, reports), both are moved to run.device. The reader's dtype: reader.dtype, else
    runtime.precision. Seeds are the caller's job (train.setup seeds before building)."""
    tokenizer = _demo_tokenizer(cfg)
    # The reader's dtype is the config's: reader.dtype, else runtime.precision (fp32 under the local engine).
    reader_cfg = dataclasses.replace(cfg.reader, dtype=cfg.reader.dtype or cfg.runtime.precision)
    with runtime.partitioned_init() if runtime is not None else contextlib.nullcontext():
        reader = build_reader(reader_cfg, tokenizer)
    reranker = None
    if _trains_reranker(cfg):
        reranker = build_reranker(cfg.reranker, _reranker_tokenizer(cfg, reader.tokenizer))
    if runtime is None:
        for model in (reader, reranker):
            if model is not None:
                model.to(cfg.run.device)
    return reader, reranker


def build_inputs(cfg: RunConfig) -> tuple[Any, RerankerInputs | None]:
    """(reader inputs, reranker inputs or None as in build_models): the input builders (gr_train.inputs) of the
    models build_models(cfg) would build, from their tokenizers and configs alone, with the same checks. Their
    tokenize gives exactly the models' ids; no weights are loaded and no modeling code is imported, so a
    preprocessing worker (ray_jobs/preprocess.py) starts in the time of its tokenizers. Raises ValueError as
    build_models does."""
    tokenizer = _demo_tokenizer(cfg)
    reader_inputs = _family(cfg.reader).build_inputs(cfg.reader, tokenizer)
    reranker_inputs = None
    if _trains_reranker(cfg):
        reranker_inputs = build_reranker_inputs(cfg.reranker, _reranker_tokenizer(cfg, reader_inputs.tokenizer))
    return reader_inputs, reranker_inputs
