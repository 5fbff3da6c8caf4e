"""Model shapes for the step cost model (cost.py, `gr-train plan`): an architecture's sizes (`Arch`) from a built-in
table of known hub ids (KNOWN), a local folder's config.json, or the config a model is built from (model_config), and
its parameter tensors module by module (`modules`: what ZeRO-3 partitions, gathers and reduces). No weights are
loaded and nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

Family = Literal["llama", "bert", "t5"]


@dataclass(frozen=True)
class Arch:
    """The sizes of one transformer that the cost model reads (counts, not bytes).

    llama covers the Llama-style decoders (llama, mistral, qwen2, qwen3: gated SiLU MLP, RMSNorm, rotary, grouped-query
    attention); bert the BERT-style encoders (bert, roberta, xlm-roberta); t5 the T5 encoder-decoders.
    """

    family: Family
    hidden: int  # d (T5: d_model)
    layers: int  # transformer blocks (T5: encoder blocks)
    heads: int  # H, query heads
    intermediate: int  # MLP width (T5: d_ff)
    vocab: int  # V, rows of the input embedding (and of an untied output layer)
    kv_heads: int = 0  # llama: key/value heads (grouped-query attention); 0 = heads
    head_dim: int = 0  # per head (T5: d_kv); 0 = hidden // heads
    tied: bool = False  # the output layer reuses the input embedding (one parameter)
    decoder_layers: int = 0  # t5: decoder blocks
    gated: bool = True  # t5: gated-GELU feed-forward (T5 v1.1) rather than ReLU (T5 v1.0); llama is always gated
    positions: int = 0  # bert: learned position embeddings
    token_types: int = 0  # bert: token-type embeddings (BERT 2, XLM-R 1)
    qkv_bias: bool = False  # llama family: q/k/v projections with a bias (qwen2)
    qk_norm: bool = False  # llama family: RMSNorm over each head's q and k (qwen3)
    buckets: int = 32  # t5: relative-position buckets
    source: str = ""  # where the sizes come from (for messages)

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def inner(self) -> int:
        """Width of the attention projections' output, H * head_dim."""
        return self.heads * self.hd


# Known architectures by hub id: sizes from each model's config.json on the Hugging Face hub (the fields named in
# Arch). A model not listed here is read from a local folder's config.json, or sized with reader.model_config /
# reranker.model_config (name_or_path: null).
_LLAMA_32_1B = Arch("llama", 2048, 16, 32, 8192, 128256, kv_heads=8, head_dim=64, tied=True,
                    source="meta-llama/Llama-3.2-1B config.json")
_LLAMA_31_8B = Arch("llama", 4096, 32, 32, 14336, 128256, kv_heads=8, head_dim=128,
                    source="meta-llama/Llama-3.1-8B config.json")
_SMOLLM2_135M = Arch("llama", 576, 30, 9, 1536, 49152, kv_heads=3, head_dim=64, tied=True,
                     source="HuggingFaceTB/SmolLM2-135M config.json")
_QWEN3_06B = Arch("llama", 1024, 28, 16, 3072, 151936, kv_heads=8, head_dim=128, tied=True, qk_norm=True,
                  source="Qwen/Qwen3-0.6B config.json (Qwen3-Reranker-0.6B has the same)")
_XLMR_BASE = Arch("bert", 768, 12, 12, 3072, 250002, positions=514, token_types=1,
                  source="BAAI/bge-reranker-base config.json (XLM-RoBERTa-base)")
_MINILM_L6 = Arch("bert", 384, 6, 12, 1536, 30522, positions=512, token_types=2,
                  source="sentence-transformers/all-MiniLM-L6-v2 config.json")
_BERT_BASE = Arch("bert", 768, 12, 12, 3072, 30522, positions=512, token_types=2,
                  source="bert-base-uncased config.json")
# T5 v1.0 (ReLU feed-forward, tied output layer), as google-t5/t5-base and t5-large. RankT5-base is sized as T5-base
# (its converted checkpoint's config.json is not in this table's sources); a local folder gives its own config.
_T5_BASE = Arch("t5", 768, 12, 12, 3072, 32128, head_dim=64, tied=True, decoder_layers=12, gated=False,
                source="google-t5/t5-base config.json")
_T5_LARGE = Arch("t5", 1024, 24, 16, 4096, 32128, head_dim=64, tied=True, decoder_layers=24, gated=False,
                 source="google-t5/t5-large config.json")

KNOWN: dict[str, Arch] = {
    "meta-llama/Llama-3.2-1B": _LLAMA_32_1B,
    "meta-llama/Llama-3.2-1B-Instruct": _LLAMA_32_1B,
    "meta-llama/Llama-3.1-8B": _LLAMA_31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_31_8B,
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "Qwen/Qwen3-Reranker-0.6B": _QWEN3_06B,
    "Qwen/Qwen3-0.6B": _QWEN3_06B,
    "BAAI/bge-reranker-base": _XLMR_BASE,
    "FacebookAI/xlm-roberta-base": replace(_XLMR_BASE, source="FacebookAI/xlm-roberta-base config.json"),
    "sentence-transformers/all-MiniLM-L6-v2": _MINILM_L6,
    "cross-encoder/ms-marco-MiniLM-L-6-v2": replace(_MINILM_L6, source="cross-encoder/ms-marco-MiniLM-L-6-v2"),
    "bert-base-uncased": _BERT_BASE,
    "google-bert/bert-base-uncased": _BERT_BASE,
    "Soyoung97/RankT5-base": replace(_T5_BASE, source="T5-base shape (google-t5/t5-base config.json)"),
    "t5-base": _T5_BASE,
    "google-t5/t5-base": _T5_BASE,
    "t5-large": _T5_LARGE,
    "google-t5/t5-large": _T5_LARGE,
    "Intel/fid_t5_large_nq": replace(_T5_LARGE, source="T5-large shape (FiD weights in the plain T5 layout)"),
}

_LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_BERT_TYPES = ("bert", "roberta", "xlm-roberta")


def arch_from_config(config: dict[str, Any], source: str = "") -> Arch:
    """An Arch from a Hugging Face config (config.json as a dict, or `PretrainedConfig.to_dict()`).

    Raises ValueError naming the model_type when it is not a llama-, bert- or t5-family model.
    """
    c, model_type = config, config.get("model_type", "")
    if model_type in _LLAMA_TYPES:
        heads = c["num_attention_heads"]
        return Arch("llama", c["hidden_size"], c["num_hidden_layers"], heads, c["intermediate_size"], c["vocab_size"],
                    kv_heads=c.get("num_key_value_heads") or heads,
                    head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                    tied=bool(c.get("tie_word_embeddings", model_type != "llama")),
                    qkv_bias=model_type == "qwen2" or bool(c.get("attention_bias", False)),
                    qk_norm=model_type == "qwen3", source=source)
    if model_type in _BERT_TYPES:
        return Arch("bert", c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"],
                    c["vocab_size"], positions=c["max_position_embeddings"], token_types=c.get("type_vocab_size", 2),
                    source=source)
    if model_type in ("t5", "mt5"):
        gated = str(c.get("feed_forward_proj", "relu")).startswith("gated")
        return Arch("t5", c["d_model"], c["num_layers"], c["num_heads"], c["d_ff"], c["vocab_size"],
                    head_dim=c["d_kv"], tied=bool(c.get("tie_word_embeddings", True)),
                    decoder_layers=c.get("num_decoder_layers") or c["num_layers"], gated=gated,
                    buckets=c.get("relative_attention_num_buckets", 32), source=source)
    raise ValueError(f"{source or 'model'}: model_type '{model_type}' is not sized by the cost model (llama, mistral, "
                     "qwen2, qwen3, bert, roberta, xlm-roberta, t5)")


def resolve(name_or_path: str | None, scratch_config: Any = None, what: str = "model") -> Arch:
    """The Arch of a model named as in reader/reranker.name_or_path: a KNOWN hub id, else a local folder's
    config.json, else (name_or_path None) `scratch_config()`, a callable giving the HF config dict the model is built
    from (its model_config). Raises ValueError naming `what` (e.g. "reader.name_or_path") when the size is unknown."""
    if name_or_path:
        if name_or_path in KNOWN:
            return KNOWN[name_or_path]
        config = Path(name_or_path) / "config.json"
        if config.is_file():
            return arch_from_config(json.loads(config.read_text()), f"{what}={name_or_path}")
        raise ValueError(f"{what}={name_or_path}: model size unknown: not a local folder with a config.json and not "
                         f"one of the known architectures ({', '.join(sorted(KNOWN))}); download it to a folder and "
                         "give its path, or add its sizes to gr_train/architectures.py KNOWN")
    if scratch_config is None:
        raise ValueError(f"{what}: model size unknown (no name_or_path and no model_config to build it from)")
    return arch_from_config(scratch_config(), f"{what} (model_config)")


# -- parameter tensors, module by module -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """One submodule that owns parameters (ZeRO-3 gathers a submodule's own parameters for each of its uses).

    params: (key, elements) per parameter; a tied parameter has the same key in every module that uses it.
    """

    name: str
    params: tuple[tuple[str, int], ...]

    @property
    def numel(self) -> int:
        return sum(n for _, n in self.params)


def _m(name: str, *sizes: int) -> Module:
    return Module(name, tuple((f"{name}.{i}", s) for i, s in enumerate(sizes) if s))


def _llama_layer(a: Arch, i: int) -> list[Module]:
    d, q, kv = a.hidden, a.inner, a.kv * a.hd
    bias = a.qkv_bias
    mods = [_m(f"layers.{i}.input_norm", d), _m(f"layers.{i}.q", d * q, q * bias),
            _m(f"layers.{i}.k", d * kv, kv * bias), _m(f"layers.{i}.v", d * kv, kv * bias)]
    if a.qk_norm:
        mods += [_m(f"layers.{i}.q_norm", a.hd), _m(f"layers.{i}.k_norm", a.hd)]
    f = a.intermediate
    return mods + [_m(f"layers.{i}.o", q * d), _m(f"layers.{i}.post_norm", d), _m(f"layers.{i}.gate", d * f),
                   _m(f"layers.{i}.up", d * f), _m(f"layers.{i}.down", f * d)]


def _bert_layer(a: Arch, i: int) -> list[Module]:
    d, f = a.hidden, a.intermediate
    p = f"layers.{i}"
    return [_m(f"{p}.q", d * d, d), _m(f"{p}.k", d * d, d), _m(f"{p}.v", d * d, d), _m(f"{p}.attn_out", d * d, d),
            _m(f"{p}.attn_norm", d, d), _m(f"{p}.intermediate", d * f, f), _m(f"{p}.out", f * d, d),
            _m(f"{p}.out_norm", d, d)]


def _t5_ffn(a: Arch, p: str) -> list[Module]:
    d, f = a.hidden, a.intermediate
    wi = [_m(f"{p}.wi_0", d * f), _m(f"{p}.wi_1", d * f)] if a.gated else [_m(f"{p}.wi", d * f)]
    return [*wi, _m(f"{p}.wo", f * d)]


def _t5_attention(a: Arch, p: str, bias: bool) -> list[Module]:
    d, q = a.hidden, a.inner
    mods = [_m(f"{p}.q", d * q), _m(f"{p}.k", d * q), _m(f"{p}.v", d * q), _m(f"{p}.o", q * d)]
    return mods + ([_m(f"{p}.relative_bias", a.buckets * a.heads)] if bias else [])


def modules(a: Arch, head: str) -> dict[str, list[Module]]:
    """The parameter-owning submodules of a model, in forward order, grouped by part.

    head: llama "lm" (CausalLM: the output layer) or "none" (the base model, as a reader's passage prefill runs it);
    bert "classifier" (sequence classification: pooler or dense + a one-output layer) or "pooler" (AutoModel);
    t5 "lm" (encoder-decoder with its output layer).
    Returns {"embed": [...], "layers": [...], "final": [...], "head": [...]} for llama and bert; t5 has "encoder",
    "decoder", "encoder_final", "decoder_final" and "decoder_embed" in place of "layers" and "final".
    """
    d, V = a.hidden, a.vocab
    embed_key = (("embed.weight", V * d),)
    if a.family == "llama":
        layers = [m for i in range(a.layers) for m in _llama_layer(a, i)]
        out = Module("lm_head", embed_key if a.tied else (("lm_head.weight", V * d),))
        return {"embed": [Module("embed", embed_key)], "layers": layers, "final": [_m("norm", d)],
                "head": [out] if head == "lm" else []}
    if a.family == "bert":
        embed = [Module("embed.word", embed_key), _m("embed.position", a.positions * d),
                 _m("embed.token_type", a.token_types * d), _m("embed.norm", d, d)]
        layers = [m for i in range(a.layers) for m in _bert_layer(a, i)]
        heads = {"classifier": [_m("pooler", d * d, d), _m("classifier", d, 1)], "pooler": [_m("pooler", d * d, d)]}
        return {"embed": [m for m in embed if m.params], "layers": layers, "final": [], "head": heads[head]}
    # T5 normalises before each sublayer: norm1 → self-attention, (decoder: norm2 → cross-attention,) norm → FFN
    encoder = [m for i in range(a.layers) for m in
               [_m(f"encoder.{i}.norm1", d), *_t5_attention(a, f"encoder.{i}.self", i == 0),
                _m(f"encoder.{i}.norm2", d), *_t5_ffn(a, f"encoder.{i}.ffn")]]
    decoder = [m for i in range(a.decoder_layers) for m in
               [_m(f"decoder.{i}.norm1", d), *_t5_attention(a, f"decoder.{i}.self", i == 0),
                _m(f"decoder.{i}.norm2", d), *_t5_attention(a, f"decoder.{i}.cross", False),
                _m(f"decoder.{i}.norm3", d), *_t5_ffn(a, f"decoder.{i}.ffn")]]
    out = Module("lm_head", embed_key if a.tied else (("lm_head.weight", V * d),))
    # the encoder and the decoder each call their own embedding module over the one shared weight
    return {"embed": [Module("encoder.embed", embed_key)], "encoder": encoder, "encoder_final": [_m("encoder.norm", d)],
            "decoder_embed": [Module("decoder.embed", embed_key)], "decoder": decoder,
            "decoder_final": [_m("decoder.norm", d)], "head": [out]}


def param_count(mods: dict[str, list[Module]] | list[Module]) -> int:
    """Parameter elements, a tied parameter counted once."""
    flat = [m for ms in mods.values() for m in ms] if isinstance(mods, dict) else mods
    return sum(dict(p for m in flat for p in m.params).values())


def largest_module(mods: dict[str, list[Module]]) -> int:
    """Elements of the largest single submodule's own parameters (DeepSpeed's `largest_layer_params`,
    deepspeed.runtime.zero.stage3.model_to_params)."""
    return max(m.numel for ms in mods.values() for m in ms)
