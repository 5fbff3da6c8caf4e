"""bench/selection_report.py says what each dataset's `untrained` row is: a reranker built from a config, a pretrained
one loaded from a path, or (a continued run) each seed's own start, read conditionally."""

from helpers import bench_script


def _report():
    return bench_script("selection_report")


def _run(kind: str, name_or_path: str | None, conditional: bool) -> dict:
    return {"config": {"reranker": {"kind": kind, "name_or_path": name_or_path, "conditional": conditional}}}


def test_the_start_row_names_a_reranker_built_from_its_config():
    line = _report().start_line({0: _run("bi_encoder", None, False), 1: _run("bi_encoder", None, False)})
    assert line == ("`untrained` is the bi_encoder every row starts from, before this training: built from "
                    "`reranker.model_config` (random initialisation); selected pointwise (hard top-k).")


def test_the_start_row_names_a_pretrained_reranker_by_its_path():
    path = "runs/cross_encoder_one_hop/final/reranker"
    line = _report().start_line({s: _run("cross_encoder", path, False) for s in (0, 1, 2)})
    assert f"loaded from `{path}`; selected pointwise" in line


def test_a_continued_runs_start_is_named_once_for_every_seed_and_read_conditionally():
    """Each seed starts from its own seed's end of another suite's run (outside the repository): one path, seed S."""
    runs = {s: _run("bi_encoder", f"/tmp/suite/three_hop_k6/conditional_sf/seed-{s}/final/reranker", True)
            for s in (0, 1, 2)}
    line = _report().start_line(runs)
    assert ("loaded from `<suite folder>/three_hop_k6/conditional_sf/seed-S/final/reranker`; "
            "selected conditionally (greedy, step by step)." in line)
    assert "/tmp" not in line
