"""Length budgets against a model's position limit, and counts of what truncation removed.

Every length budget of the config (reader.passage_max_tokens, the prompt, reader.answer_max_tokens,
reranker.max_tokens) is checked when its model is built: a budget past the positions the model can embed fails there
with the config keys, the lengths and the limit named (GPT-2 would fail later with "index out of range in self";
Llama would silently run past max_position_embeddings). Truncation that removes a passage's whole text, or part of a
question, is counted per reader (`Truncations`), warned about at its first occurrence and logged by the recipe
(reader/truncated_*).
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("gr_train.lengths")

# Learned absolute positions offset by the padding index (positions start at pad_token_id + 1).
_PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")


def position_limit(config) -> tuple[str, int] | None:
    """(config key, positions) of the longest sequence `config`'s model can embed: n_positions (GPT-2),
    max_position_embeddings (Llama, Qwen2, BERT; RoBERTa / XLM-R less their padding offset). None for models with
    relative position biases (T5: relative_attention_num_buckets), which have no such limit."""
    if getattr(config, "relative_attention_num_buckets", None) is not None:
        return None
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if key == "max_position_embeddings" and getattr(config, "model_type", "") in _PADDING_OFFSET_TYPES:
                value -= (getattr(config, "pad_token_id", None) or 0) + 1
            return key, value
    return None


def check_budget(what: str, parts: dict[str, int], limit: tuple[str, int] | None) -> None:
    """Raise ValueError when the lengths in `parts` (name → tokens; config keys where the length is one) add up to
    more than `limit` (position_limit's (key, positions); None = no limit). The message names every part, the total,
    the limit and the config keys to lower."""
    if limit is None:
        return
    total = sum(parts.values())
    if total > limit[1]:
        terms = " + ".join(f"{name} ({n})" for name, n in parts.items())
        keys = " / ".join(name for name in parts if "." in name and " " not in name)
        raise ValueError(f"{what}: {terms} = {total} positions > the model's {limit[0]} ({limit[1]}); "
                         f"lower {keys}")


class Truncations:
    """What a reader's truncation removed, counted by kind (e.g. "passages_without_text": inputs whose whole passage
    text was cut because the question filled the budget). The first occurrence of each kind is logged as a warning;
    the recipe logs the counts as reader/truncated_<kind>."""

    def __init__(self):
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, n: int, message: str) -> None:
        """Count `n` more of `kind`; warn with `message` (what was cut, and the config key to raise) the first time."""
        if n <= 0:
            return
        if not self.counts[kind]:
            log.warning("%s (counted as reader/truncated_%s; this warning is shown once)", message, kind)
        self.counts[kind] += n
