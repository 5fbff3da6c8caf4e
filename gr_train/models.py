"""Building a run's models from its config: the frozen (or pre-trained) reader and the reranker.

Every command that needs models builds them here, so that they come out the same everywhere: the training recipe
(train.setup, inside the runtime's partitioned_init), `gr-train evaluate`, compare's untrained reference,
ray_jobs/evaluate.py and the Ray Data tokenizers of ray_jobs/preprocess.py.
"""

from __future__ import annotations

import contextlib
import dataclasses

from gr_train import synthetic
from gr_train.config import ReaderSection, RunConfig
from gr_train.demo_reader import DemoFiDReader
from gr_train.objectives import OBJECTIVES
from gr_train.reader import CausalLMReader, FiDT5Reader, Reader
from gr_train.reader_tuning import make_trainable
from gr_train.reranker import Reranker, build_reranker

# reader.kind → reader family; `Family.build(cfg.reader, tokenizer)` loads it from reader.name_or_path or builds
# it from reader.model_config.
READERS: dict[str, type[Reader]] = {"demo_fid": DemoFiDReader, "fid_t5": FiDT5Reader, "causal_lm": CausalLMReader}


def build_reader(cfg: ReaderSection, tokenizer=None) -> Reader:
    """Reader from `cfg` (config.ReaderSection), frozen (requires_grad False, eval mode) unless cfg.trainable (then
    reader_tuning.make_trainable picks the trainable parameters).
    Raises ValueError naming reader.kind when it is not a key of READERS."""
    if cfg.kind not in READERS:
        raise ValueError(f"reader.kind: unknown '{cfg.kind}' ({' | '.join(READERS)})")
    reader = READERS[cfg.kind].build(cfg, tokenizer)
    reader.requires_grad_(bool(cfg.trainable))
    if cfg.trainable:
        make_trainable(reader, cfg)  # all parameters, the top reader.train_layers, or LoRA (reader.lora_rank)
    else:
        reader.eval()
    return reader


def build_models(cfg: RunConfig, runtime=None) -> tuple[Reader, Reranker | None]:
    """(reader, reranker or None when the objective trains the reader alone: objective.name=reader). The demo's
    word-level tokenizer is built when no model names one. With a runtime, the reader is built inside its
    partitioned_init() (ZeRO-3: no rank holds the whole reader). The reader's dtype: reader.dtype, else
    runtime.precision. Seeds are the caller's job (train.setup seeds before building)."""
    tokenizer = None
    if cfg.reader.kind == "demo_fid" and not cfg.reader.name_or_path:
        tokenizer = synthetic.build_tokenizer(cfg.synthetic)
    # The reader's dtype is the config's: reader.dtype, else runtime.precision (fp32 under the local engine).
    reader_cfg = dataclasses.replace(cfg.reader, dtype=cfg.reader.dtype or cfg.runtime.precision)
    with runtime.partitioned_init() if runtime is not None else contextlib.nullcontext():
        reader = build_reader(reader_cfg, tokenizer)
    reranker = None
    if OBJECTIVES[cfg.objective.name].trains == "reranker":
        rr_tok = None
        if not cfg.reranker.name_or_path and not cfg.reranker.tokenizer_path:
            rr_tok = reader.tokenizer  # tiny demo reranker shares the reader's locally built vocabulary
        reranker = build_reranker(cfg.reranker, rr_tok)
    return reader, reranker
