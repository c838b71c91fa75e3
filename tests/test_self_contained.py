"""The project stands on its own: nothing outside tests/ points to files or documents outside the
repository (tests may read ../shared/data/). Specs are cited by their public section names."""

from __future__ import annotations

import re

from conftest import ROOT

OUTSIDE = re.compile(
    r"shared/(reference|seeds|terminology|data)|\.\./shared/|catalog §|checklist [0-9]|checklist section"
    r"|clinical-rules\.md|durable-rules-notes|cds-hooks-2\.0-checklist",
    re.I,
)
SKIP_DIRS = {
    ".git",
    ".venv",
    "tests",
    "node_modules",
    "var",
    "artifacts",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}
TEXT = {
    ".py",
    ".md",
    ".json",
    ".toml",
    ".txt",
    ".cfg",
    ".ini",
    ".yml",
    ".yaml",
    ".html",
    ".js",
    ".css",
    ".sh",
    ".conf",
    ".csv",
    "",
}


def _files():
    for path in sorted(ROOT.rglob("*")):
        parts = set(path.relative_to(ROOT).parts[:-1])
        if (
            path.is_file()
            and not parts & SKIP_DIRS
            and not any(p.endswith(".egg-info") for p in parts)
            and path.suffix in TEXT
            and path.stat().st_size < 5_000_000
        ):
            yield path


def test_no_file_outside_tests_refers_to_material_outside_the_project():
    found = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [
            f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}"
            for n, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)
        ]
    assert not found, "cite the project's own docs (docs/knowledge.md) or the spec's section names:\n" + "\n".join(
        found
    )
