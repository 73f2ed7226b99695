"""The docs travel with the code: every setting is in the README's table, and no document or module
points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from zenthor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *(ROOT / "docs").glob("*.md"),
    *(ROOT / "ops").glob("*.md"),
    ROOT / "bench" / "README.md",
]


def test_every_setting_is_in_the_readme_table_and_the_table_names_only_settings():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings") :]
    table = table[: table.index("\n## ")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    fields = set(Settings.model_fields)
    assert fields - named == set(), "settings missing from README.md's table"
    assert named - fields == set(), "README.md's table names variables that are not settings"


def test_no_document_or_module_points_outside_the_repository():
    files = [*DOCS, *ROOT.joinpath("zenthor").rglob("*.py"), *ROOT.joinpath("config").glob("*")]
    for path in files:
        text = path.read_text(errors="replace")
        assert "../shared" not in text, f"{path.relative_to(ROOT)} refers to ../shared"


def test_relative_links_in_the_docs_lead_to_files_that_exist():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
