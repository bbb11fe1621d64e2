"""The README and docs/ as a reader follows them: every relative link and #anchor resolves, every page of docs/ is
linked from the README, the README stays a five-minute read, and the notebooks' links into docs/ resolve."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from semifinetune.notebooks import NOTEBOOK_DIR
from semifinetune.runs import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
PAGES = [README, PROJECT_ROOT / "BENCHMARKS.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
HOME = "https://github.com/semifinetune/semifinetune/blob/main/"  # the notebooks link docs/ here: Colab has no relative links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code spans, where brackets are not links."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercased, formatting and punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def broken(source: Path, target: str) -> str | None:
    """Why a link from `source` does not resolve, or None."""
    path, _, anchor = target.partition("#")
    resolved = (source.parent / path).resolve() if path else source
    if not resolved.exists():
        return f"{target}: no such file"
    if anchor and (resolved.is_dir() or resolved.suffix != ".md" or anchor not in anchors(resolved)):
        return f"{target}: no heading #{anchor} in {resolved.name}"
    return None


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def test_slug_is_githubs():
    assert slug("A T4, estimated (not measured)") == "a-t4-estimated-not-measured"
    assert slug("Colab install: torch is never replaced") == "colab-install-torch-is-never-replaced"
    assert slug("Fine-tune or retrieve: the 2 x 2 (embedded SmolLM2-135M, CPU, 2 cores)") == (
        "fine-tune-or-retrieve-the-2-x-2-embedded-smollm2-135m-cpu-2-cores")
    assert slug("The `cpu` pipeline") == "the-cpu-pipeline"


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## Second part\n", encoding="utf-8")
    assert broken(page, "#second-part") is None and broken(page, "page.md#top") is None
    assert broken(page, "#third-part") == "#third-part: no heading #third-part in page.md"
    assert broken(page, "other.md") == "other.md: no such file"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(PROJECT_ROOT).as_posix() for p in PAGES])
def test_relative_links_resolve(page):
    targets = [t for t in links(page) if not re.match(r"[a-z]+:", t)]
    assert page != README or len(targets) > 20  # the README links its notebooks, docs and picture
    problems = [why for t in targets if (why := broken(page, t))]
    assert problems == [], f"{page.name}: {problems}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    linked |= {path / "README.md" for path in linked}  # a folder's link shows its README.md
    unlinked = [p.name for p in PAGES[2:] if p.resolve() not in linked]
    assert unlinked == [], f"docs pages nothing in the README leads to: {unlinked}"


def test_the_readme_is_a_five_minute_read():
    words = len(README.read_text(encoding="utf-8").split())
    assert words <= 1500, f"README.md has {words} words; move detail to docs/"


def test_the_readme_keeps_cis_test_command():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in ci.splitlines() if line.startswith("./install.sh"))
    assert command in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_links_into_docs_resolve(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    targets = [t for t in LINK.findall(text) if t.startswith(HOME)]
    problems = [why for t in targets if (why := broken(PROJECT_ROOT / "README.md", t[len(HOME):]))]
    assert problems == [], f"{path.name}: {problems}"
    assert path.stem == "02_load_4bit" or targets, f"{path.name} links nothing in docs/"


EXAMPLE = PROJECT_ROOT / "docs" / "example"


def test_the_example_run_is_the_six_notebooks_executed_on_the_cpu_profile():
    """docs/example: every notebook executed on the embedded model, no error, no stderr, no progress bar; the
    README's picture beside them."""
    from semifinetune.notebooks import NOTEBOOKS

    for name in NOTEBOOKS:
        nb = nbformat.read(EXAMPLE / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), f"{name}: not executed"
        for cell in code:
            for out in cell.outputs:
                assert out.output_type != "error", f"{name}: {out.ename}: {out.evalue}"
                assert not (out.output_type == "stream" and out.name == "stderr"), f"{name}: {out.text[:200]}"
                assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), f"{name}: a widget"
        shown = "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for c in code for o in c.outputs)
        assert "embedded:SmolLM2-135M-Instruct (cpu profile)" in shown, f"{name}: not the cpu profile's run"
    assert (EXAMPLE / "base_vs_tuned.png").stat().st_size > 5000
