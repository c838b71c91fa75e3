"""docs/security-and-faults.md promises that each row is backed by a test: check the names."""

import re

from conftest import ROOT

TABLE = ROOT / "docs" / "security-and-faults.md"


def test_every_test_named_in_the_faults_table_exists():
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", TABLE.read_text(encoding="utf-8"))
    assert len(named) > 40
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(encoding="utf-8"), re.M)
    ]
    assert not missing, f"docs/security-and-faults.md names tests that do not exist: {missing}"
