"""Every relative link in README.md and docs/**/*.md points at a file or folder that exists, and the research
index links every file under docs/research/runs (directly or through a folder it links)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "docs" / "research" / "runs"
# [text](target) and ![alt](target); a target ends at the first space or closing parenthesis
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
# Folders that work in progress adds (the paper's experiment at 1.5B, the model-based judge): links into them are
# checked as soon as the folder exists.
PENDING = [ROOT / "docs" / "research" / "paper15", ROOT / "docs" / "research" / "judge"]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    text = _CODE.sub("", path.read_text(encoding="utf-8"))
    links = [unquote(m.group(1)) for m in _LINK.finditer(text)]
    return [t for t in links if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def broken_links() -> list[str]:
    broken = []
    for path in markdown_files():
        for target in relative_links(path):
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if any(not p.exists() and (resolved == p or p in resolved.parents) for p in PENDING):
                continue
            if not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    return broken


def test_every_relative_link_resolves():
    assert broken_links() == [], "broken relative links (fix the path or the file):\n" + "\n".join(broken_links())


def test_research_index_covers_every_run_file():
    index = ROOT / "docs" / "research" / "README.md"
    linked = {(index.parent / t.split("#", 1)[0]).resolve() for t in relative_links(index)}
    missing = [f.relative_to(ROOT) for f in sorted(RUNS.rglob("*")) if f.is_file()
               and not any(f.resolve() == p or p in f.resolve().parents for p in linked)]
    assert missing == [], "docs/research/README.md links none of these (or a folder above them):\n" + "\n".join(
        str(m) for m in missing)


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) ![img](missing.png) `[code](nowhere.md)` [web](https://example.org)\n")
    assert relative_links(page) == ["page.md", "missing.png"]
    assert not (tmp_path / "missing.png").exists()
