"""Every rule module reads as the recommendation it implements: its docstring states it, names its
sources by their titles, and gives each card rule's inclusion and exclusion criteria."""

from __future__ import annotations

import importlib
import re

import pytest

import rules
from cds_service.authoring.rulebook import CARD, REGISTRY
from cds_service.knowledge.sources import SOURCES, cited

rules.load_all()
TOPIC_MODULES = sorted(
    {spec.module for spec in REGISTRY.values() if spec.stratum == CARD and spec.module.startswith("rules.")}
)
TITLE_WORDS = {s.key: s.title.split(",")[0].split(" (")[0] for s in SOURCES}  # "Differential Diagnosis of ... Jerking"


def _doc(module: str) -> str:
    return importlib.import_module(module).__doc__ or ""


@pytest.mark.parametrize("module", TOPIC_MODULES)
def test_the_docstring_states_recommendation_sources_and_criteria_per_rule(module):
    doc = _doc(module)
    assert re.search(r"^Recommendations?:", doc, re.M), "state the recommendation(s) the module implements"
    assert re.search(r"^Sources?:", doc, re.M), "name the sources by title"
    cards = sorted((s for s in REGISTRY.values() if s.stratum == CARD and s.module == module), key=lambda s: s.id)
    for spec in cards:
        lines = re.findall(rf"^- {spec.id}\b.*?(?=^- R|\Z)", doc, re.M | re.S)
        assert lines, f"{spec.id}: a '- {spec.id} ...' line with its criteria"
        assert "Include:" in lines[0] and "Exclude:" in lines[0], f"{spec.id}: inclusion and exclusion criteria"
        for source in cited(spec.citation):
            assert TITLE_WORDS[source.key] in " ".join(doc.split()), f"{spec.id} cites {source.title}: name it"


@pytest.mark.parametrize("module", [f"rules.{m}" for m in ("common", "diagnoses", "__init__")] + TOPIC_MODULES)
def test_no_docstring_names_files_or_documents_outside_the_project(module):
    doc = _doc(module.removesuffix(".__init__"))
    assert not re.search(r"(?i)\bseeds?\b|\bcatalog(ue)? §|\d{3}_[0-9a-f]{8,}\.txt|shared/|checklist", doc)
