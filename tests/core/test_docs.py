"""docs/OPTIONS.md is the rendering of the one options schema (regenerate: safeneuron options --markdown)."""

from pathlib import Path

from safeneuron_plugins.options import options_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_options_doc_is_up_to_date():
    assert (ROOT / "docs" / "OPTIONS.md").read_text() == options_markdown(), (
        "docs/OPTIONS.md is stale: run `safeneuron options --markdown > docs/OPTIONS.md`")
