"""Micro-batches: records → padded candidate tensors and the reranker's and reader's token ids (`collate`), moved
to a device (`Batch.to`), and the reader's passage states for a batch (`passage_states`, cached or not).
Shared by every objective (objectives.py), evaluation, reader reports and the benches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gr_train import reader_cache


@dataclass
class Batch:
    """A collated micro-batch. n = candidates per question after padding.

    valid: [B, n] bool (False on padded candidates); gold: [B, n] bool (is_gold, False when unlabelled).
    """

    records: list
    valid: torch.Tensor
    gold: torch.Tensor
    reranker_inputs: dict | None
    reader_inputs: dict

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with every tensor (valid, gold, and the tokenizers' flat dicts of tensors) on `device`."""
        return Batch(self.records, self.valid.to(device), self.gold.to(device),
                     move_inputs(self.reranker_inputs, device), move_inputs(self.reader_inputs, device))


def move_inputs(inputs: dict | None, device: torch.device | str) -> dict | None:
    """A tokenizer's flat dict with every tensor on `device` (other values as they are); None stays None."""
    if inputs is None:
        return None
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def module_device(module) -> torch.device:
    """Where a model computes: its first parameter's device (under ZeRO-3 a partitioned parameter is still on its
    rank's device); the CPU for a module without parameters."""
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def collate(records: list, n: int, reranker=None, reader=None, intermediates: bool = False,
            device: torch.device | str | None = None) -> Batch:
    """Cut each record to its first n candidates, pad to the batch's largest count with ("", ""), tokenize
    for the reranker and the reader (either may be None). Padded candidates have valid False. The tensors are
    built on the CPU and moved to `device` when one is given (the training recipe passes its runtime's)."""
    n_b = max(min(n, len(r.ctxs)) for r in records)
    passages, valid, gold = [], [], []
    for r in records:
        ctxs = r.ctxs[:n_b]
        pad = n_b - len(ctxs)
        passages.append([(c.title, c.text) for c in ctxs] + [("", "")] * pad)
        valid.append([True] * len(ctxs) + [False] * pad)
        gold.append([bool(c.is_gold) for c in ctxs] + [False] * pad)
    questions = [r.question for r in records]
    rr_inputs = reranker.tokenize(questions, passages) if reranker is not None else None
    rd_inputs = None
    if reader is not None:
        # the intermediate-entity labels (deep supervision) exist for the demo reader only
        wants = intermediates and getattr(reader, "takes_intermediates", False)
        extra = {"intermediates": [r.intermediate for r in records]} if wants else {}
        rd_inputs = reader.tokenize(questions, passages, [r.target_text for r in records], **extra)
    batch = Batch(records, torch.tensor(valid), torch.tensor(gold), rr_inputs, rd_inputs)
    return batch if device is None else batch.to(device)


def candidate_texts(batch: Batch) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """(questions, passages) of a collated batch: B question strings and B rows of n (title, text) pairs, padded
    with ("", "") as collate padded them (what its tokenizers read)."""
    n = batch.valid.shape[1]
    passages = [[(c.title, c.text) for c in r.ctxs[:n]] + [("", "")] * (n - min(n, len(r.ctxs)))
                for r in batch.records]
    return [r.question for r in batch.records], passages


def passage_states(batch: Batch, reader, cfg):
    """reader.encode_passages of the batch; from the per-question cache when cfg.objective.cache_passage_states."""
    if cfg.objective.cache_passage_states:
        return reader_cache.cached_states(batch, cfg, lambda: reader.encode_passages(batch.reader_inputs))
    return reader.encode_passages(batch.reader_inputs)

