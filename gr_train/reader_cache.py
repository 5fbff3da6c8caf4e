"""Per-question caches of what the frozen reader computes, reused across steps, epochs, objectives and runs in
one process.

Passage states and the baselines' per-passage reader quantities depend only on the frozen reader and on the
question with its candidates, never on the reranker (docs/design.md#cost-structure). Both caches are keyed by
the reader's fingerprint (reader_fingerprint: its config section with the resolved dtype, its weight and tokenizer
files, run.seed when its weights are random, library versions), the device it runs on and the question's id,
text, target and candidate passages, so an edited record, another reader or another setting of it misses.

- `targets`: [n] fp32 per question (objectives.reader_quantity), a few bytes each; on by default
  (objective.cache_reader_targets).
- `states`: the passage states of encode_passages, split per question (every tensor in them has the batch first).
  Large (decoder-only: layers x 2 x kv_dim x n x L floats per question, 29.5 MB for SmolLM2-135M with 10 passages
  of 64 tokens), so opt-in (objective.cache_passage_states) for training sets read many times (several epochs,
  seeds or objectives). In memory by default; with objective.passage_state_dir, on disk instead: one safetensors
  file per question, written atomically, shared by the processes and runs that use the folder and kept across
  restarts. A file's name also hashes the reader's weight and tokenizer files and the torch and transformers
  versions, so retrained weights in the same folder miss. Loading rebuilds only gr_train's own state classes
  (PassageCache, FiDStates); it executes no code from the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

_TARGETS: dict[tuple, torch.Tensor] = {}
_STATES: dict[tuple, Any] = {}
_FINGERPRINTS: dict[tuple, str] = {}  # reader folder (path, file names, sizes, mtimes) -> sha256 of its files


def clear() -> None:
    """Forget every cached value in memory (files under objective.passage_state_dir stay)."""
    _TARGETS.clear()
    _STATES.clear()
    _FINGERPRINTS.clear()


def reader_key(cfg) -> str:
    """What determines the frozen reader as configured: its config section (prompt, instruction, passage and prompt
    token limits, attention backend, ...) with the dtype resolved as models.build_models resolves it (reader.dtype,
    else runtime.precision: an fp32 and a bf16 run of the same reader differ), plus, when it has random weights,
    the seed, and for the demo reader built from scratch the synthetic section its vocabulary is built from."""
    r = cfg.reader
    key = dataclasses.asdict(r)
    key["dtype"] = r.dtype or cfg.runtime.precision
    if not r.name_or_path:
        key["seed"] = cfg.run.seed
        if r.kind == "demo_fid":
            key["synthetic"] = dataclasses.asdict(cfg.synthetic)
    return json.dumps(key, sort_keys=True, default=str)


def question_keys(batch, cfg, what: str) -> list[tuple]:
    """One key per question of the batch: (what, reader fingerprint, device type the reader runs on, id, question,
    target, its valid candidates, padded n)."""
    reader = reader_fingerprint(cfg)
    device = batch.valid.device.type  # kernels differ between devices
    counts = batch.valid.sum(-1).tolist()
    n = batch.valid.shape[1]
    return [(what, reader, device, r.id, r.question, r.target_text, tuple((c.title, c.text) for c in r.ctxs[:m]), n)
            for r, m in zip(batch.records, counts)]


def cached_targets(batch, cfg, what: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """[B, n] fp32, nan on padded candidates: each question's row from the cache, or `compute()` (the whole
    batch's [B, n]) when any question is missing."""
    keys = question_keys(batch, cfg, what)
    counts = batch.valid.sum(-1).tolist()
    if any(k not in _TARGETS for k in keys):
        values = compute().detach().cpu()
        for k, row, m in zip(keys, values, counts):
            _TARGETS[k] = row[:m].clone()
    out = torch.full(batch.valid.shape, float("nan"))
    for b, (k, m) in enumerate(zip(keys, counts)):
        out[b, :m] = _TARGETS[k]
    return out.to(batch.valid.device)


def cached_states(batch, cfg, encode: Callable[[], Any]) -> Any:
    """The batch's passage states: each question's slice from the cache, or `encode()` for the whole batch when
    any question is missing (then every question's slice is stored). In memory, or on disk under
    cfg.objective.passage_state_dir when it is set. Returned on the batch's device."""
    keys = question_keys(batch, cfg, "states")
    if cfg.objective.passage_state_dir:
        states = _disk_states(keys, cfg, encode)
    elif any(k not in _STATES for k in keys):
        states = encode()
        for b, k in enumerate(keys):
            _STATES[k] = _map(states, lambda t, b=b: t[b : b + 1].clone())
    else:
        states = _cat([_STATES[k] for k in keys])
    device = batch.valid.device  # states read from disk come back on the CPU
    return _map(states, lambda t: t.to(device))


def _map(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply fn to every tensor in a tensor / tuple / list / dataclass tree."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(x, fn) for x in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _map(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    raise TypeError(f"reader_cache: cannot split passage states of type {type(obj).__name__}")


def _cat(parts: list) -> Any:
    """Inverse of the per-question split: concatenate matching tensors along the batch dimension."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: _cat([getattr(p, f.name) for p in parts])
                                             for f in dataclasses.fields(first)})
    raise TypeError(f"reader_cache: cannot merge passage states of type {type(first).__name__}")


# -- passage states on disk ---------------------------------------------------------------------------------------

def _state_classes() -> dict[str, type]:
    from gr_train.reader import FiDStates, PassageCache

    return {"PassageCache": PassageCache, "FiDStates": FiDStates}


def _folder_digest(path: str) -> str:
    """sha256 over the names and bytes of the regular files directly in a local folder (weights, config,
    tokenizer); the path itself when it is not a local folder. Memoised per (path, names, sizes, mtimes)."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    files = sorted(f for f in folder.iterdir() if f.is_file())
    stamp = (str(folder.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        _FINGERPRINTS[stamp] = h.hexdigest()
    return _FINGERPRINTS[stamp]


def reader_fingerprint(cfg) -> str:
    """What determines the frozen reader's passage states and targets, in memory and across processes:
    reader_key, the contents of its weight, tokenizer and init_from folders (a reader retrained in place misses),
    and the torch and transformers versions (their kernels). A hub id counts by its name."""
    import transformers

    r = cfg.reader
    parts = [reader_key(cfg), torch.__version__, transformers.__version__]
    parts += [_folder_digest(p) for p in (r.name_or_path, r.tokenizer_path, r.init_from) if p]
    return json.dumps(parts)


def state_path(root: Path, fingerprint: str, key: tuple) -> Path:
    """<root>/<sha256 of (reader fingerprint, question key)>.safetensors."""
    digest = hashlib.sha256(json.dumps([fingerprint, key], default=str).encode()).hexdigest()
    return root / f"{digest}.safetensors"


def _disk_states(keys: list[tuple], cfg, encode: Callable[[], Any]) -> Any:
    root = Path(cfg.objective.passage_state_dir)
    fingerprint = reader_fingerprint(cfg)
    paths = [state_path(root, fingerprint, k) for k in keys]
    if all(p.is_file() for p in paths):
        return _cat([load_states(p) for p in paths])
    states = encode()
    root.mkdir(parents=True, exist_ok=True)
    for b, path in enumerate(paths):
        if not path.is_file():
            save_states(_map(states, lambda t, b=b: t[b : b + 1]), path)
    return states


def _flatten(obj: Any, tensors: list[torch.Tensor]) -> Any:
    """A JSON tree of obj with each tensor replaced by its index in `tensors` (appended)."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.detach().cpu().contiguous().clone())
        return {"tensor": len(tensors) - 1}
    if isinstance(obj, (tuple, list)):
        return {"seq": type(obj).__name__, "items": [_flatten(x, tensors) for x in obj]}
    name = type(obj).__name__
    if dataclasses.is_dataclass(obj) and _state_classes().get(name) is type(obj):
        return {"class": name, "fields": {f.name: _flatten(getattr(obj, f.name), tensors)
                                          for f in dataclasses.fields(obj)}}
    raise TypeError(f"reader_cache: cannot store passage states of type {name} (known: tensors, tuples, lists, "
                    f"{', '.join(_state_classes())})")


def save_states(states: Any, path: Path) -> None:
    """Write one question's passage states to path (safetensors; the structure as JSON metadata), atomically:
    a file that exists is complete, also after a crash or beside another process writing the same question."""
    from safetensors.torch import save_file

    tensors: list[torch.Tensor] = []
    tree = _flatten(states, tensors)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({str(i): t for i, t in enumerate(tensors)}, str(tmp), metadata={"tree": json.dumps(tree)})
    except BaseException:  # e.g. the disk filled up: a half-written file would keep it full
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load_states(path: Path) -> Any:
    """Read passage states written by save_states. Raises ValueError naming the file when it is unreadable or its
    structure names anything but tensors, tuples, lists and gr_train's state classes."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tree = json.loads((f.metadata() or {})["tree"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # OSError, a missing or bad 'tree' entry, safetensors' own SafetensorError
        raise ValueError(f"{path}: not a passage-state file ({type(e).__name__}: {e}); delete it to re-encode") from e
    classes = _state_classes()

    def build(node: Any, where: str) -> Any:
        if isinstance(node, dict) and set(node) == {"tensor"} and str(node["tensor"]) in tensors:
            return tensors[str(node["tensor"])]
        if isinstance(node, dict) and set(node) == {"seq", "items"} and node["seq"] in ("tuple", "list"):
            items = [build(x, f"{where}[{i}]") for i, x in enumerate(node["items"])]
            return tuple(items) if node["seq"] == "tuple" else items
        if isinstance(node, dict) and set(node) == {"class", "fields"} and node["class"] in classes:
            cls = classes[node["class"]]
            names = {f.name for f in dataclasses.fields(cls)}
            if set(node["fields"]) != names:
                raise ValueError(f"{path}: field {where}: {cls.__name__} needs fields {sorted(names)}, got "
                                 f"{sorted(node['fields'])}")
            return cls(**{k: build(v, f"{where}.{k}") for k, v in node["fields"].items()})
        raise ValueError(f"{path}: field {where}: not a tensor, tuple, list or one of {', '.join(classes)}: "
                         f"{json.dumps(node)[:200]}")

    return build(tree, "states")
