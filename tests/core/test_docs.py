"""docs/OPTIONS.md is the rendering of the one options schema (regenerate: safeneuron options --markdown)."""

from pathlib import Path

from safeneuron_plugins.options import options_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_options_doc_is_up_to_date():
    assert (ROOT / "docs" / "OPTIONS.md").read_text() == options_markdown(), (
        "docs/OPTIONS.md is stale: run `safeneuron options --markdown > docs/OPTIONS.md`")


#: .md names the code writes (outputs), not documents it cites
WRITTEN = {"report.md"}


def test_documents_cited_in_the_code_exist():
    """Every .md file a module or comment of the package cites is in the project (relative to the repository,
    the package or the citing file's folder): docstrings cited METHOD.md and DATA.md, which never were."""
    import re

    missing = []
    for source in sorted([*(ROOT / "safeneuron_plugins").rglob("*.py"), *(ROOT / "integrations").rglob("*.py")]):
        for name in set(re.findall(r"[\w./-]+\.md\b", source.read_text())) - WRITTEN:
            if not any((base / name).is_file() for base in (ROOT, ROOT / "safeneuron_plugins", source.parent)):
                missing.append(f"{source.relative_to(ROOT)}: {name}")
    assert not missing, missing
