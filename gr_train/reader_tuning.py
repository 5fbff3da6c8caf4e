"""Reader fine-tuning (objective.name=reader with reader.trainable): which parameters train, the loss, the saved folder.

The paper's step 1 (Huang et al., ACL 2025, after Izacard & Grave 2021): before a reranker is trained
through it, the reader is fine-tuned on the task's question-answer pairs with every passage visible. Here it reads
them in its own input format, so that what it learns is what G-Rerank later reads: decoder-only readers in the
parallel format (each passage at positions 0..L-1, the query after them, reader.CausalLMReader), FiD-T5 with the
passages encoded separately. The same recipe runs on the local engine and on ZeRO-3 (the reader then partitioned
and trained; no reranker is built).

- `make_trainable`: all parameters (default), the top reader.train_layers blocks and the final norm, or LoRA
  adapters (peft, Hu et al. 2022) of rank reader.lora_rank on reader.lora_targets, the base weights frozen.
- `answer_loss_all_visible`: the loss, passage encoding under autograd (Reader.answer_loss_naive).
- `passage_dropout`: reader.passage_dropout, the candidates a question shows the reader at one step when some are
  hidden at random (a pure function of the seed, the step and the question, so resume and batch splits repeat it).
- `save_reader`: a plain HF folder (config, model.safetensors, tokenizer; LoRA merged into the weights) that
  `reader.name_or_path` loads frozen in the reranker recipes; the demo reader writes its own folder.
"""

from __future__ import annotations

import copy
import zlib
from pathlib import Path

import torch
from torch import nn

from gr_train.config import ConfigError
from gr_train.reader import visible_log_mask


def layer_stack(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(transformer blocks bottom to top, final norms) of the stack whose top blocks reader.train_layers trains:
    a T5's decoder (block, final_layer_norm); a decoder-only model's base (layers or h; norm or ln_f). Raises
    ValueError for an architecture without such a stack."""
    if hasattr(model, "decoder") and hasattr(model.decoder, "block"):
        return list(model.decoder.block), [model.decoder.final_layer_norm]
    base = model.base_model
    for name in ("layers", "h"):
        if isinstance(getattr(base, name, None), nn.ModuleList):
            norms = [getattr(base, n) for n in ("norm", "ln_f") if isinstance(getattr(base, n, None), nn.Module)]
            return list(getattr(base, name)), norms
    raise ValueError(f"reader.train_layers: no layer stack found in {type(model).__name__} (decoder.block, layers "
                     "or h)")


def make_trainable(reader, cfg) -> None:
    """Choose the reader's trainable parameters from cfg (config.ReaderSection); called by models.build_reader when
    cfg.trainable. train_layers N > 0: only the top N blocks of layer_stack and its final norms; lora_rank r > 0:
    LoRA adapters (lora_A [r, in], lora_B [out, r], scaling lora_alpha / r, B zero-initialised so the model starts
    unchanged) injected into every layer named in lora_targets, everything else frozen. Raises ValueError when N
    exceeds the stack; ConfigError (before training) when no module matches lora_targets, a matched module is not
    one LoRA can adapt, or an adapted weight is tied to another module's (check_lora_targets); both name the
    key and the module."""
    model = reader.model
    if cfg.train_layers:
        blocks, norms = layer_stack(model)
        if cfg.train_layers > len(blocks):
            raise ValueError(f"reader.train_layers={cfg.train_layers}: the reader has {len(blocks)} layers")
        model.requires_grad_(False)
        for module in blocks[-cfg.train_layers :] + norms:
            module.requires_grad_(True)
    elif cfg.lora_rank:
        inject_lora(model, cfg.lora_rank, cfg.lora_alpha, list(cfg.lora_targets), "reader")


def inject_lora(model: nn.Module, rank: int, alpha: float, targets: list[str], section: str) -> None:
    """LoRA adapters (peft, Hu et al. 2022) of `rank` on every module named in `targets`, in place: lora_A [r, in],
    lora_B [out, r] (zero-initialised, so the model starts unchanged), scaling alpha / r; afterwards only the
    adapters' parameters have requires_grad. Used for readers (reader.lora_*) and rerankers (reranker.lora_*);
    `section` names the config section in errors. Raises ConfigError naming `<section>.lora_targets` and the
    module when none matches, a matched module is not one LoRA can adapt, or an adapted weight is tied to another
    module's (check_lora_targets)."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
    try:
        inject_adapter_in_model(lora, model)
    except ValueError as e:  # no module of that name, or one LoRA cannot adapt (a norm, an activation, ...)
        raise ConfigError(f"{section}.lora_targets={targets}: {_target_error(model, targets, e)}") from None
    check_lora_targets(model, list(targets), section)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def _target_error(model: nn.Module, targets: list[str], error: ValueError) -> str:
    """peft's refusal, on one line, with the module it refused named (peft names only its class and repr)."""
    first = str(error).split("\n")[0]
    for name, m in model.named_modules():
        if any(name == t or name.endswith(f".{t}") for t in targets) and f"Target module {type(m).__name__}" in first:
            return (f"module {name} ({type(m).__name__}) is not a layer LoRA can adapt (peft adapts Linear, "
                    "Embedding, Conv1d/2d/3d, GPT-2's Conv1D and MultiheadAttention); name such layers instead")
    return f"{first} (modules are matched by their last name parts, e.g. q_proj, embed_tokens)"


def trainable_fraction(reader) -> float:
    """Share of the reader's parameter elements that train (for logs and tests)."""
    total = sum(p.numel() for p in reader.parameters())
    return sum(p.numel() for p in reader.parameters() if p.requires_grad) / max(1, total)


def answer_loss_all_visible(reader, inputs: dict, valid: torch.Tensor) -> torch.Tensor:
    """Token-mean answer CE with every valid passage visible, [B] fp32, differentiable w.r.t. every reader
    parameter (passage encoding included): Reader.answer_loss_naive with log M = 0 on valid candidates and NEG_BIAS
    on padding. valid: [B, n] bool."""
    return reader.answer_loss_naive(inputs, visible_log_mask(valid))


def passage_dropout(valid: torch.Tensor, p: float, seed: int, step: int, ids: list[str]) -> torch.Tensor:
    """The candidates visible to the reader at one fine-tuning step when each valid one is hidden with probability
    p (reader.passage_dropout). valid: [B, n] bool; ids: the B question ids. Returns [B, n] bool, a subset of valid
    with at least one candidate per question that has any (the one with the largest draw when all were hidden).

    Question b's draws u [n] ~ U(0, 1) come from a generator seeded by the CRC-32 of "seed:step:ids[b]": the same
    question at the same step sees the same passages whatever the micro-batch, rank or resume. p = 0 returns valid.
    """
    if p == 0.0:
        return valid
    u = torch.stack([torch.rand(valid.shape[1], generator=torch.Generator().manual_seed(
        zlib.crc32(f"{seed}:{step}:{qid}".encode()))) for qid in ids]).to(valid.device)
    u = u.masked_fill(~valid, -1.0)  # padding: never visible, never the fallback
    visible = valid & (u >= p)
    fallback = torch.zeros_like(valid).scatter_(1, u.argmax(1, keepdim=True), True) & valid
    return torch.where(visible.any(1, keepdim=True), visible, fallback)


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with LoRA adapters merged under the base model's own names, so that the class loads them
    as a plain checkpoint; without adapters, model.state_dict(). Each adapted layer is merged by peft's own merge
    on a copy (Linear, Embedding, convolutions, GPT-2's Conv1D, ...: whatever layer type peft adapted), and every
    tensor of its base layer is kept (a weight without a bias, an embedding's rows)."""
    adapted = _lora_layers(model)
    if not adapted:
        return model.state_dict()
    state = {k: v for k, v in model.state_dict().items()
             if "lora_" not in k and not any(k.startswith(f"{name}.base_layer.") for name in adapted)}
    with torch.no_grad():
        for name, m in adapted.items():
            layer = copy.deepcopy(m)
            layer.merge(safe_merge=True)  # refuses a merge that gives non-finite weights
            for key, value in layer.get_base_layer().state_dict().items():
                state[f"{name}.{key}"] = value
    return state


def _ties_word_embeddings(model: nn.Module) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "tie_word_embeddings", False))


def _tied_to(model: nn.Module, name: str, module: nn.Module) -> list[str]:
    """Parameters outside `module` (at `name`) that share storage with one of its base layer's parameters."""
    own = {p.data_ptr() for p in module.get_base_layer().parameters()}
    return [n for n, p in model.named_parameters(remove_duplicate=False)
            if p.data_ptr() in own and not n.startswith(f"{name}.")]


def check_lora_targets(model: nn.Module, targets: list[str], section: str = "reader") -> None:
    """After injection: every adapted layer can be merged into a checkpoint that reloads with the trained weights.
    An adapted weight tied to another module's weight (which reads it without the adapter) is refused (ConfigError
    naming the key and the module), unless the model ties its input embeddings and output layer
    (tie_word_embeddings) and the adapted one is the output layer, or the input embeddings tied to nothing but the
    output layer: save_reader then saves the two untied, as they trained."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    for name, m in _lora_layers(model).items():
        tied = _tied_to(model, name, m)
        if not tied:
            continue
        base = m.get_base_layer()
        allowed: set[str] = set()
        if _ties_word_embeddings(model) and out in (m, base):
            allowed = set(tied)  # the embeddings read the weight without the adapter, in training and once untied
        elif _ties_word_embeddings(model) and inp in (m, base) and out is not None:
            allowed = _param_names(model, out)  # any other reader of the embeddings would bypass the adapter
        others = [t for t in tied if t not in allowed]
        if others:
            raise ConfigError(f"{section}.lora_targets={targets}: module {name} ({type(base).__name__}) shares its "
                              f"weight with {others[0]}, which reads it without the adapter, and a merged checkpoint "
                              f"cannot keep the two apart: leave {name} out of {section}.lora_targets")


def _param_names(model: nn.Module, module: nn.Module) -> set[str]:
    """Every name under which `module` (or the layer a LoRA wrapper of it adapts) holds a parameter."""
    objects = {id(module), id(module.get_base_layer())} if hasattr(module, "get_base_layer") else {id(module)}
    return {f"{n}.{pn}".replace(".base_layer.", ".") for n, mod in model.named_modules(remove_duplicate=False)
            if id(mod) in objects for pn, _ in mod.named_parameters() if "lora_" not in pn}


def save_reader(reader, path: str | Path) -> Path:
    """Write the reader as a folder that reader.name_or_path loads: HF readers save_pretrained (config.json,
    model.safetensors, generation config, tokenizer with its chat template; LoRA merged); the demo reader its own
    format. Call with the parameters whole (runtime.gathered under ZeRO-3). Returns path.

    A LoRA-adapted input embedding or output layer of a model that ties them (tie_word_embeddings) is saved untied
    (both weights, tie_word_embeddings false), as it trained: the adapter changed one of the two."""
    path = Path(path)
    if hasattr(reader, "save"):
        reader.save(path)
        return path
    save_merged(reader.model, path)
    reader.tokenizer.save_pretrained(path)
    return path


def save_merged(model: nn.Module, path: str | Path) -> None:
    """model.save_pretrained(path) with LoRA adapters merged into the weights (merged_state_dict: the live model
    keeps its adapters), so the folder loads with the plain HF class, without peft. A LoRA-adapted input embedding
    or output layer of a model that ties them is saved untied, as it trained (see save_reader)."""
    state = {k: v.detach().cpu() for k, v in merged_state_dict(model).items()}
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    untie = bool(_lora_layers(model)) and _ties_word_embeddings(model) and _tied_apart(model, state)
    if untie:
        config.tie_word_embeddings = False
    try:
        model.save_pretrained(path, state_dict=state, safe_serialization=True)
    finally:
        if untie:
            config.tie_word_embeddings = True


def _tied_apart(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """True when parameters the model ties (one storage, several names) differ in the merged state."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(p.data_ptr(), []).append(n.replace(".base_layer.", "."))
    for names in groups.values():
        values = [state[n] for n in names if n in state]
        if any(not torch.equal(values[0], v) for v in values[1:]):
            return True
    return False
