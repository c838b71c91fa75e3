"""The sources the rules rest on, as a clinician names them, and as an integrator traces them.

A rule's `citation` is machine text (seed article file names, short names such as "AASM 2024").
Cards and rule pages must cite by human title and publisher, never by file name (CDS Hooks 2.0,
section Source: the label is what a clinician reads). This module is the one mapping between the
two, so every renderer uses the same words and the same links.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    key: str  # stable key for the card extension
    short: str  # how a clinician refers to it in a sentence
    title: str  # full human citation: title, authors or publisher, year
    url: str | None = None  # a DOI for a guideline; None when the source has no stable public address
    guideline: bool = False
    file: str | None = None  # the seed article's file name (extension and governance only)


SEED_PUBLISHER = "Dr.Oracle Medical Advisory Board, 2025"

SOURCES: tuple[Source, ...] = (
    Source(
        "seed-000",
        "review article on involuntary leg jerking",
        f"Differential Diagnosis of Involuntary Lower Left Leg Jerking, {SEED_PUBLISHER}",
        file="000_e09f97222edeabb3.txt",
    ),
    Source(
        "seed-001",
        "review article on intractable leg spasms",
        f"Differential Diagnoses for Intractable Leg Spasms, {SEED_PUBLISHER}",
        file="001_9c4bd8494c6f1f15.txt",
    ),
    Source(
        "seed-002",
        "review article on new leg fasciculation",
        f"New Involuntary Leg Fasciculation: Evaluation and Management, {SEED_PUBLISHER}",
        file="002_bc010253c106cbbd.txt",
    ),
    Source(
        "seed-003",
        "review article on myoclonic jerks",
        f"What are the causes of myoclonic jerks?, {SEED_PUBLISHER}",
        file="003_34900d95d68d4bde.txt",
    ),
    Source(
        "aasm-2024",
        "AASM 2024 guideline",
        "AASM 2024 clinical practice guideline on RLS and PLMD, Winkelman et al., J Clin Sleep Med 2024",
        url="https://doi.org/10.5664/jcsm.11390",
        guideline=True,
    ),
    Source(
        "fda-2010",
        "FDA 2010 safety communication",
        "FDA Drug Safety Communication on quinine (Qualaquin) for leg cramps, 2010, and the Qualaquin boxed warning",
    ),
    Source(
        "us-labels", "US product labels", "US product labels (renal dosing; cut-offs not verified for this service)"
    ),
)
BY_KEY = {s.key: s for s in SOURCES}
AASM_2024 = BY_KEY["aasm-2024"]

_MARKERS = {"aasm-2024": "AASM 2024", "fda-2010": "FDA 2010", "us-labels": "US product labels"}


def cited(citation: str) -> list[Source]:
    """The sources a rule's machine citation names, in a stable order (seeds first)."""
    found = []
    for source in SOURCES:
        marker = _MARKERS.get(source.key)
        if (source.file and source.file in citation) or (marker and marker in citation):
            found.append(source)
    return found


def human_citation(citation: str) -> str:
    """'Title (publisher); Title (authors)': what a clinician reads under 'Source'."""
    return "; ".join(s.title for s in cited(citation)) or "Leg-movement CDS rule set"


def seed_files(citation: str) -> list[str]:
    return [s.file for s in cited(citation) if s.file]


_FILE_NAME = re.compile(r"\b\d{3}_[0-9a-f]{8,}\.txt\b")


def strip_file_names(text: str) -> str:
    """Replace seed file names in a machine text by the article titles (for thresholds' sources)."""
    by_file = {s.file: s.title for s in SOURCES if s.file}
    return _FILE_NAME.sub(lambda m: by_file.get(m.group(0), "review article"), text)
