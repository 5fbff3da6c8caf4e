"""The repository is self-contained: no tracked file cites a file outside it, every cited anchor of docs/design.md
exists, every Markdown link of the README and docs resolves (file and anchor), the README is a front page (two
commands first, at most 250 lines), the repository paths that the README's commands and the configs name exist,
and the vendored data is documented, licensed per dataset and kept out of the wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"

# Notes that lived beside the repository (never in it), and the sibling folder they sat in. Built from pieces so
# that this file does not match its own patterns.
OUTSIDE = re.compile(r"\b(?:DES" r"IGN|EN" r"V)\.md\b|\.\./sha" r"red\b|[\"']sha" r"red[\"']\s*/\s*[\"']data[\"']")
CITED_ANCHOR = re.compile(r"docs/design\.md#([\w-]+)")
# Repository paths in commands and configs; runs/, models/ and absolute paths are outputs or cluster storage.
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:configs|data|docs|gr_train|ray_jobs|deploy|bench|tests)/[\w.*/-]*)")


def repo_files() -> list[Path]:
    """Tracked files plus new ones git does not ignore, without docs/ and data/ (text that may name the notes)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    return [REPO / n for n in names if not n.startswith(("docs/", "data/")) and (REPO / n).is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte in its first 8 KiB, or not UTF-8)."""
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def github_slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def design_anchors() -> set[str]:
    return {github_slug(m) for m in re.findall(r"^#{1,6} (.+)$", DESIGN.read_text(), flags=re.M)}


def test_github_slug():
    assert github_slug("CPU, DeepSpeed and Ray pitfalls") == "cpu-deepspeed-and-ray-pitfalls"
    assert github_slug("Lazy imports under ZeRO init") == "lazy-imports-under-zero-init"
    assert github_slug("Exact relaxation, and what it costs") == "exact-relaxation-and-what-it-costs"


def test_nothing_cites_files_outside_the_repository():
    hits = []
    for path in repo_files():
        text = text_of(path)
        for i, line in enumerate((text or "").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not hits, "cite docs/design.md or data/ instead:\n" + "\n".join(hits)


def test_cited_design_anchors_exist():
    anchors = design_anchors()
    assert {"the-method", "cost-structure", "demo-reader-recipe", "decisions-and-their-figures",
            "ray-local-head"} <= anchors
    missing, cited = [], 0
    for path in [*repo_files(), DESIGN]:
        for i, line in enumerate((text_of(path) or "").splitlines(), 1):
            for anchor in CITED_ANCHOR.findall(line):
                cited += 1
                if anchor not in anchors:
                    missing.append(f"{path.relative_to(REPO)}:{i}: #{anchor}")
    in_page = re.findall(r"\]\(#([\w-]+)\)", DESIGN.read_text())
    missing += [f"docs/design.md: link #{a}" for a in in_page if a not in anchors]
    assert cited >= 15, cited  # the code, config and test comments that cite it
    assert not missing, f"anchors not in docs/design.md ({sorted(anchors)}):\n" + "\n".join(missing)


# [text](target) links; a target is a relative path, an optional #anchor, or both (web links are not checked)
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_anchors(path: Path) -> set[str]:
    """The GitHub anchors of a Markdown file's headings (outside fenced code blocks)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {github_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def broken_links(path: Path) -> list[str]:
    """The Markdown links of `path` whose file does not exist or whose #anchor is not a heading of it."""
    bad = []
    for target in MD_LINK.findall(path.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.relative_to(REPO)}: {target} (no such file)")
        elif anchor and (dest.suffix != ".md" or anchor not in markdown_anchors(dest)):
            bad.append(f"{path.relative_to(REPO)}: {target} (no heading #{anchor})")
    return bad


def test_every_markdown_link_resolves():
    pages = [REPO / "README.md", REPO / "RESULTS.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").rglob("*.md"))]
    links = sum(len(MD_LINK.findall(p.read_text())) for p in pages)
    assert links >= 20, links  # the README's and the guide's links at least
    assert [b for p in pages for b in broken_links(p)] == []


def test_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "a.md").write_text("# Top\n\n## The demo's figures\n\n[ok](#the-demos-figures) [ok](b.md) "
                                   "[web](https://x.org/y) [gone](c.md) [no](#nope) [no](b.md#top)\n")
    (tmp_path / "b.md").write_text("```\n# Top\n```\n")
    assert broken_links(tmp_path / "a.md") == ["a.md: c.md (no such file)", "a.md: #nope (no heading #nope)",
                                               "a.md: b.md#top (no heading #top)"]


def test_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 250, len(lines)
    first_block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line for line in first_block.splitlines() if not line.startswith("#")]
    assert readme.index("```bash") < readme.index("\n## ")  # before any section
    assert len(commands) == 2 and commands[0].endswith("gr-train demo")
    assert commands[1].endswith("python -m pytest -q -p no:cacheprovider tests")
    assert all(c.startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && ") for c in commands)


def named_paths(text: str) -> set[str]:
    return {p.rstrip(".,:;)`'\"") for p in REPO_PATH.findall(text)}


def test_named_paths_match_the_pattern():
    text = ("see `data/README.md`, configs/demo.yaml. and /shared/data/x.json, runs/cmp/data/train.jsonl, "
            "$HOME/gr_train/x, data.train_path=data/hotpotqa/x.json")
    assert named_paths(text) == {"data/README.md", "configs/demo.yaml", "data/hotpotqa/x.json"}


def test_paths_named_by_readme_and_configs_exist():
    sources = [REPO / "README.md", REPO / "RESULTS.md", REPO / "docs" / "guide.md", REPO / "docs" / "results.md",
               *sorted((REPO / "configs").glob("*.yaml"))]
    missing = []
    for src in sources:
        for p in sorted(named_paths(src.read_text())):
            if not (any(REPO.glob(p)) if "*" in p else (REPO / p).exists()):
                missing.append(f"{src.relative_to(REPO)}: {p}")
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def test_vendored_data_is_documented_and_licensed():
    readme = (REPO / "data" / "README.md").read_text()
    files = sorted(p for p in (REPO / "data").glob("*/*") if p.suffix in (".json", ".jsonl"))
    assert len(files) == 7
    for path in files:
        assert f"`{path.parent.name}/{path.name}`" in readme, path
    for folder, licence in (("hotpotqa", "Attribution-ShareAlike 4.0"), ("2wikimultihopqa", "Apache License"),
                            ("musique", "Attribution 4.0 International")):
        assert licence in (REPO / "data" / folder / "LICENSE").read_text(), folder


def test_wheel_leaves_out_the_data_folder():
    tomllib = pytest.importorskip("tomllib")
    setuptools = pytest.importorskip("setuptools")
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_namespace_packages(str(REPO), include=find["include"])
    assert "gr_train" in packages and "ray_jobs" in packages
    assert not [p for p in packages if p.split(".")[0] not in ("gr_train", "ray_jobs")], packages
