"""Which chart resources could matter to a rule at all, decided before any of them is projected.

A chart sent whole (an EHR that ignores the search filters) is mostly resources no rule reads:
body heights, unrelated diagnoses, metformin refills. Each used to go through its full projection
(statuses, dates, code sets) only to yield nothing. `may_matter` reads one thing first, the
resource's concept (its codes and texts), with the same terminology matchers the projections use,
and drops the resource only when that concept was read and names nothing any rule knows. Such a
resource could not have produced a fact or changed one: every projection returns no fact for a
concept it does not recognise, whatever the status, date, subject or shape of the rest.

Everything else is kept for the full projection, which then decides exactly as before: a
resource whose concept cannot be read (no code and no text, a text that is not a string, a
shape the matchers refuse), a Medication reference that only the projection can resolve, and
every resource whose concept does match. So entered-in-error, refuted, inactive, foreign-patient
and unparseable data of a relevant kind are still refused and logged one by one; only the
resources dropped here are counted instead of listed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from cds_service.facts.project import DONE_ORDER_STATUS, DONE_PROCEDURE, FINAL_REPORT, PENDING_ORDER_STATUS
from cds_service.fhir.fhir_read import codings_of, string
from cds_service.knowledge.terminology import Terminology

_UNREADABLE = None  # a concept with nothing to match on: the projection decides


def _concept(concept) -> tuple[list[dict], list[str]] | None:
    """(codings with a string code, texts) of a CodeableConcept: `codings_of`, and the concept's
    text and the codings' displays, which the projections match on too. None when there is
    nothing to match on, or a text is not a string."""
    if not isinstance(concept, dict):
        return _UNREADABLE
    codings = codings_of(concept)
    texts = [t for t in [concept.get("text"), *(c.get("display") for c in codings)] if t]
    if (not codings and not texts) or not all(isinstance(t, str) for t in texts):
        return _UNREADABLE
    return codings, texts


class Relevance:
    """The per-type tests, bound once to a terminology (`for_terminology`)."""

    def __init__(self, term: Terminology):
        self.term = term
        self._checks: dict[str, Callable[[dict], bool]] = {
            "Condition": self._condition,
            "Observation": self._observation,
            "ServiceRequest": self._service_request,
            "Procedure": self._procedure,
            "DiagnosticReport": self._procedure,
            "MedicationRequest": self._medication,
            "MedicationStatement": self._medication,
        }

    def may_matter(self, res: dict) -> bool:
        """False only for a resource that cannot yield a fact: a type no projection reads (a
        Medication is indexed apart, never a fact of its own), or a concept read and matched to
        nothing. A test that fails on an odd shape keeps the resource: the projection then skips
        and logs it as unparseable, as it always has."""
        kind = res.get("resourceType")
        if kind == "Patient":
            return True
        check = self._checks.get(kind) if isinstance(kind, str) else None
        if check is None:
            return False
        try:
            return check(res)
        except Exception:  # whatever the shape, the full projection decides (and logs) as before
            return True

    def for_one_call(self) -> Callable[[dict], bool]:
        """`may_matter` with a memo that lives for one call, like all patient data. A chart that
        is mostly noise repeats a few concepts thousands of times (one height code, one metformin
        product), so the test for such a resource is one dictionary lookup. The memo's key holds
        everything the test reads for a resource with one coding (type, status, the concept's
        text, the coding's system, code and display) and only strings or nulls; any other shape
        goes to `may_matter` itself, unremembered."""
        memo: dict[tuple, bool] = {}
        decide = self.may_matter

        def may_matter(res: dict) -> bool:
            kind = res.get("resourceType")
            medication = kind == "MedicationRequest" or kind == "MedicationStatement"
            concept = res.get("medicationCodeableConcept" if medication else "code")
            if not isinstance(concept, dict):
                return decide(res)
            coding = concept.get("coding")
            if not isinstance(coding, list) or len(coding) != 1 or not isinstance(coding[0], dict):
                return decide(res)
            first = coding[0]
            text, status = concept.get("text"), res.get("status")
            key = (kind, status, text, first.get("system"), first.get("code"), first.get("display"))
            try:
                found = memo.get(key)  # only keys of strings and nulls are stored: another never hits
            except TypeError:  # a list or an object where a string belongs
                return decide(res)
            if found is None:
                found = decide(res)
                if all(part is None or type(part) is str for part in key):
                    memo[key] = found
            return found

        return may_matter

    def _condition(self, res: dict) -> bool:
        parts = _concept(res.get("code"))
        if parts is None:
            return True
        codings, texts = parts
        sets_for = self.term.codesets.sets_for
        return any(sets_for(c.get("system"), c["code"]) for c in codings) or any(
            self.term.codesets.sets_for_text(t) for t in texts
        )

    def _observation(self, res: dict) -> bool:
        parts = _concept(res.get("code"))
        return parts is None or self.term.observation_analyte(*parts) is not None

    def _service_request(self, res: dict) -> bool:
        """A pending lab order (an analyte) or a procedure order. The status is read first, as
        the projection does before anything else: another status, or a lab order already
        completed (a CMP of years ago), yields no fact there either."""
        status = string(res.get("status"))
        if status not in PENDING_ORDER_STATUS | DONE_ORDER_STATUS:
            return False
        parts = _concept(res.get("code"))
        return (
            parts is None
            or (status in PENDING_ORDER_STATUS and self.term.observation_analyte(*parts) is not None)
            or self.term.procedures.match(*parts) is not None
        )

    def _procedure(self, res: dict) -> bool:
        """A completed Procedure or a final DiagnosticReport naming a known procedure (the
        projection, too, reads the status first and returns no fact for another)."""
        done = DONE_PROCEDURE if res.get("resourceType") == "Procedure" else FINAL_REPORT
        if string(res.get("status")) not in done:
            return False
        parts = _concept(res.get("code"))
        return parts is None or self.term.procedures.match(*parts) is not None

    def _medication(self, res: dict) -> bool:
        """Only a `medicationCodeableConcept` is judged here: a reference resolves in the projection."""
        concept = res.get("medicationCodeableConcept")
        if not isinstance(concept, dict):
            return True
        parts = _concept(concept)
        return parts is None or self.term.may_match_medication(*parts)


_BOUND: weakref.WeakKeyDictionary[Terminology, Relevance] = weakref.WeakKeyDictionary()


def for_terminology(term: Terminology) -> Relevance:
    """The tests for `term`, made once per terminology (one per process; tests make a few)."""
    relevance = _BOUND.get(term)
    if relevance is None:
        relevance = _BOUND[term] = Relevance(term)
    return relevance
