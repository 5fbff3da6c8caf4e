"""The README's `gr-train` commands that other tests do not already run (demo, train, evaluate are covered in
test_demo.py, test_train.py, test_evaluate.py)."""

from pathlib import Path

import pytest

from gr_train import cli
from gr_train.data import load_records

HOTPOT = Path(__file__).resolve().parents[1] / "data" / "hotpotqa" / "dev_distractor_head53_rakin061.json"  # vendored


def test_convert_hotpotqa_to_fid_jsonl(tmp_path, capsys):
    out = tmp_path / "hotpot.jsonl"
    assert cli.main(["convert", str(HOTPOT), str(out)]) == 0
    records = load_records(out)
    assert len(records) == 53 and all(sum(bool(c.is_gold) for c in r.ctxs) == 2 for r in records)
    assert "53 records" in capsys.readouterr().out


def test_generate_writes_train_and_dev(tmp_path):
    assert cli.main(["generate", "--out-dir", str(tmp_path), "synthetic.n_train=10", "synthetic.n_dev=5"]) == 0
    assert len(load_records(tmp_path / "train.jsonl")) == 10 and len(load_records(tmp_path / "dev.jsonl")) == 5


def test_convert_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('[{"_id": "a", "question": "q", "answer": "x", "supporting_facts": [], "context": 3}]')
    assert cli.main(["convert", str(bad), str(tmp_path / "o.jsonl"), "--format", "hotpotqa"]) == 2
    assert "x.json" in capsys.readouterr().err


def test_config_lists_every_key_with_its_type_default_and_doc(capsys):
    """Every field of every section, read from config.py's source: a field added without a comment fails here."""
    import dataclasses
    import json

    from gr_train.config import RunConfig

    assert cli.main(["config", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    cfg = RunConfig()
    assert list(described) == [f.name for f in dataclasses.fields(RunConfig)]
    for section in dataclasses.fields(RunConfig):
        keys = described[section.name]["keys"]
        fields = dataclasses.fields(getattr(cfg, section.name))
        assert list(keys) == [f.name for f in fields], section.name
        for f in fields:
            assert keys[f.name]["default"] == getattr(getattr(cfg, section.name), f.name), (section.name, f.name)
            assert keys[f.name]["type"] and keys[f.name]["doc"].strip(), f"{section.name}.{f.name} has no doc comment"
    assert described["gumbel"]["keys"]["k"] == {"type": "int", "default": 2, "doc": "passages kept (max_softmax: "
                                                "number of softmax samples during training; top-k at inference)"}
    # a comment block above a field is its doc too
    assert described["run"]["keys"]["num_threads"]["doc"].startswith("torch / OpenMP / MKL threads per process")
    assert described["data"]["keys"]["train_path"]["type"] == "str | None"

    assert cli.main(["config"]) == 0
    text = capsys.readouterr().out
    assert "  gumbel.k: int = 2\n      passages kept" in text and "  data.train_path: str | None = null\n" in text


def test_config_filters_by_section_and_names_the_sections_when_unknown(capsys):
    assert cli.main(["config", "gumbel", "data"]) == 0
    text = capsys.readouterr().out
    headers = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert headers == ["gumbel", "data"]
    assert "gumbel.tau:" in text and "data.n_candidates:" in text and "\n  reranker." not in text
    assert cli.main(["config", "gumbel", "rerankr"]) == 2
    err = capsys.readouterr()
    lines = [line for line in err.err.splitlines() if line.startswith("gr-train: error:")]
    assert len(lines) == 1 and "Traceback" not in err.err and not err.out
    assert "unknown section 'rerankr' (sections: run, synthetic, data, reader, reranker, gumbel," in lines[0]


def test_help_lists_index_and_retrieve_with_an_example_and_the_files_written(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "    index " in text and "    retrieve " in text
    for command, example, writes in (
            ("index", "gr-train index --config configs/real.yaml retrieval.corpus_path=", "<index_dir>/index.json"),
            ("retrieve", "gr-train retrieve --config configs/real.yaml --questions", "OUT.rejects.jsonl")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        example_part, writes_part = text.split("example:\n")[1].split("\n\nwrites:\n")
        assert example in " ".join(example_part.split()) and writes in writes_part
        assert "--ray" in text and "token authentication" in " ".join(text.split())
