"""Per-resource projection into facts: conditions, observations, service requests and procedures."""

from __future__ import annotations

from cds_service.facts.schema import CONDITION, LAB, ORDER, PENDING_TEST, PROCEDURE_DONE, UNREADABLE_RESULT
from cds_service.facts.select import _Selection
from cds_service.fhir.fhir_read import (
    as_list,
    clip,
    codings_of,
    fhir_date_range,
    first_code,
    mapping,
    observation_date,
    parse_fhir_date,
    quantity_of,
    reference_of,
    string,
    text_of,
)

ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"entered-in-error", "refuted"}
FINAL_OBSERVATION = {"final", "amended", "corrected"}
PENDING_OBSERVATION = {"preliminary", "registered"}  # drawn, not resulted: counts as a pending test only
DONE_ORDER_STATUS = {"completed"}
PENDING_ORDER_STATUS = {"active", "draft"}
DONE_PROCEDURE = {"completed"}
FINAL_REPORT = {"final", "amended", "corrected"}
UNKNOWN_DAYS = -1  # a date we could not read: rules that need a date treat -1 as "unknown"


class _Projection(_Selection):
    """The fact builder's per-resource projections; mixed into `_Builder`."""

    def _days_ago(self, value) -> int:
        when = parse_fhir_date(value)
        return (self.today - when).days if when else UNKNOWN_DAYS

    def _condition(self, res: dict) -> dict | None:
        verification = first_code(res.get("verificationStatus"))
        if verification in EXCLUDED_VERIFICATION:
            self._skip(res, f"verificationStatus {verification}")
            return None
        clinical = first_code(res.get("clinicalStatus"))
        if clinical not in ACTIVE_CONDITION:
            self._skip(res, f"clinicalStatus {clinical or 'missing'}")
            return None
        onset = res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start")
        dates = {
            "recorded": clip(str(res.get("recordedDate") or onset or ""), 10) or "undated",
            "recorded_days_ago": self._days_ago(res.get("recordedDate") or onset),
            "onset_days_ago": self._days_ago(onset or res.get("recordedDate")),
        }
        span = fhir_date_range(onset or res.get("recordedDate"))
        age_days = (self.today - span[0]).days if span else None  # from the earliest day a partial date allows
        facts = self._coded_conditions(
            res, [res.get("code")], clinical, verification or "unconfirmed", dates, age_days=age_days
        )
        return facts[0] if facts else None  # a condition no rule knows: not a fact, not worth a log line

    def _observations(self, observations: list[dict]) -> list[dict]:
        """The latest readable final result per analyte, plus pending (preliminary) results and
        results that exist but cannot be read (which rules name, and never count as "on file")."""
        latest: dict[str, dict] = {}
        pending: list[dict] = []
        unreadable: list[dict] = []
        for fact in self._convert(observations, self._observation):
            if fact["kind"] == "pending_test":
                pending.append(fact)
            elif fact["kind"] == "unreadable_result":
                unreadable.append(fact)
            elif fact["analyte"] not in latest or fact["days_ago"] < latest[fact["analyte"]]["days_ago"]:
                latest[fact["analyte"]] = fact
        return (
            list(latest.values())
            + self._capped("pending_test", pending)
            + self._capped("unreadable_result", unreadable)
        )

    def _observation(self, res: dict) -> dict | None:
        code = res.get("code")
        found = self.term.observation_analyte(
            codings_of(code),
            [t for t in [text_of(code), *(c.get("display") for c in codings_of(code))] if isinstance(t, str)],
        )
        if found is None:
            return None
        analyte, code_value, how = found
        status = string(res.get("status"))
        if status in PENDING_OBSERVATION:
            return PENDING_TEST.new(
                analyte=analyte.name, resource_ref=reference_of(res), status=status, origin="result"
            )
        if status not in FINAL_OBSERVATION:
            self._skip(res, f"status {status}")
            return None
        when = observation_date(res)
        if when is None:
            self._skip(res, "no parseable effective date")
            return None
        days_ago = (self.today - when).days
        if days_ago < -1:
            self._skip(res, "effective date in the future")
            return None
        lookback = self.term.settings.days(analyte.lookback_setting)
        if days_ago > lookback:
            self._skip(res, f"older than the {lookback}-day lookback")
            return None
        fact = {
            "kind": "lab",
            "analyte": analyte.name,
            "resource_ref": reference_of(res),
            "loinc": clip(code_value, 40),
            "matched_by": how,
            "date": when.isoformat(),
            "days_ago": max(days_ago, 0),
            "usable": False,
        }
        if res.get("dataAbsentReason"):
            return self._unreadable(res, fact, "no value (dataAbsentReason)")
        if analyte.panel:
            return LAB.new(**fact)  # a resulted panel or questionnaire: done, no single value to compare
        value = quantity_of(res)
        if value is None:
            return self._unreadable(res, fact, "no number could be read from the value")
        unit = value.unit
        if unit is None and value.source == "text":
            unit = analyte.unit  # "<10" reported as text for an analyte with one canonical unit
            fact["unit_assumed"] = True
        converted = analyte.to_canonical(value.number, unit)
        fact.update(
            raw_value=value.number,
            raw_unit=clip(unit or "(none)", 20),
            comparator=value.comparator,
            value_source=value.source,
        )
        if converted is None:
            return self._unreadable(
                res, fact, f"unit {clip(unit or '(none)', 20)!r} is not one {analyte.title} is reported in"
            )
        fact.update(value=round(converted, 3), unit=analyte.unit, usable=True)
        low = _reference_low(res)
        if low is not None and low[1] == unit:
            fact["below_reference"] = value.number < low[0]
        return LAB.new(**fact)

    def _unreadable(self, res: dict, fact: dict, reason: str) -> dict:
        """A result that exists and counts by status and date but cannot be used: never "on file"
        for an absence rule, and named by the rule that then fires."""
        self._skip(res, f"{fact['analyte']}: {reason}")
        raw = res.get("valueString") if isinstance(res.get("valueString"), str) else fact.get("raw_value")
        quantity = mapping(res.get("valueQuantity"))
        unit = quantity.get("code") or quantity.get("unit") or fact.get("raw_unit")
        return UNREADABLE_RESULT.new(
            analyte=fact["analyte"],
            resource_ref=fact["resource_ref"],
            loinc=fact["loinc"],
            matched_by=fact["matched_by"],
            date=fact["date"],
            days_ago=fact["days_ago"],
            reason=clip(reason, 80),
            raw_text=clip(f"{raw:g}" if isinstance(raw, float) else str(raw if raw is not None else "(none)"), 40),
            raw_unit=clip(str(unit) if isinstance(unit, str) else "(none)", 20),
        )

    def _service_request(self, res: dict, origin: str, selected: bool) -> dict | None:
        """A lab order (pending test) or a procedure order (PSG, EMG, imaging, referral)."""
        status = "draft" if origin == "draft" else string(res.get("status"))
        if status not in PENDING_ORDER_STATUS | DONE_ORDER_STATUS:
            return None
        code = res.get("code")
        codings = codings_of(code)
        texts = [t for t in [text_of(code), *(c.get("display") for c in codings)] if isinstance(t, str)]
        lab = self.term.observation_analyte(codings, texts)
        if lab and status in PENDING_ORDER_STATUS:
            return PENDING_TEST.new(analyte=lab[0].name, resource_ref=reference_of(res), status=status, origin=origin)
        procedure = self.term.procedures.match(codings, texts)
        if procedure is None:
            return None
        reasons = [c for concept in as_list(res.get("reasonCode")) for c in codings_of(concept)]
        unclassified = sum(1 for c in reasons if not self.term.codesets.sets_for(c.get("system"), c.get("code")))
        return ORDER.new(
            procedure=procedure[0],
            matched_by=procedure[1],
            origin=origin,
            selected=selected,
            status=status,
            resource_ref=reference_of(res),
            name=clip(texts[0] if texts else self.term.procedures.titles[procedure[0]], 60),
            days_ago=self._days_ago(res.get("authoredOn")),
            unclassified_reasons=unclassified,
        )

    def _procedure_done(self, res: dict) -> dict | None:
        """A completed Procedure or a final DiagnosticReport (prior EMG, R12)."""
        status = string(res.get("status"))
        if status not in (DONE_PROCEDURE if res.get("resourceType") == "Procedure" else FINAL_REPORT):
            return None
        code = res.get("code")
        codings = codings_of(code)
        procedure = self.term.procedures.match(
            codings, [t for t in [text_of(code), *(c.get("display") for c in codings)] if isinstance(t, str)]
        )
        if procedure is None:
            return None
        period = mapping(res.get("performedPeriod"))
        effective = mapping(res.get("effectivePeriod"))
        when = (
            res.get("performedDateTime")
            or period.get("end")
            or period.get("start")
            or res.get("effectiveDateTime")
            or effective.get("end")
            or res.get("issued")
        )
        days_ago = self._days_ago(when)
        if days_ago < 0:
            self._skip(res, "no parseable date (or a future one) on a procedure")
            return None
        return PROCEDURE_DONE.new(
            procedure=procedure[0],
            matched_by=procedure[1],
            resource_ref=reference_of(res),
            date=clip(str(when), 10),
            days_ago=days_ago,
        )

    def _coded_conditions(
        self,
        res: dict,
        concepts: list,
        clinical: str,
        verification: str,
        dates: dict,
        every: bool = False,
        age_days: int | None = None,
        windowed: bool = True,
    ) -> list[dict]:
        """Condition facts for the codings that fall in a known code set (the first only, unless
        `every`); a concept with no known coding may still match a code set's listed phrases.
        A set with a window (pregnancy) counts only while the condition's onset, else recorded
        date, is within it; an undated one never does (charts leave pregnancies active for years)."""
        facts = []
        for concept in concepts:
            matches = [
                (
                    c["system"],
                    c["code"],
                    c.get("display"),
                    self._windowed(res, self.term.codesets.sets_for(c.get("system"), c["code"]), age_days, windowed),
                )
                for c in codings_of(concept)
            ]
            matches = [m for m in matches if m[3]]
            text = text_of(concept) or next(
                (c.get("display") for c in codings_of(concept) if isinstance(c.get("display"), str)), None
            )
            text_sets = (
                self._windowed(res, self.term.codesets.sets_for_text(text), age_days, windowed)
                if not matches
                else frozenset()
            )
            if text_sets:
                matches = [("text", "text", text, text_sets)]
            for system, code, display, sets in matches:
                facts.append(
                    CONDITION.new(
                        resource_ref=reference_of(res),
                        system=system,
                        code=code,
                        display=clip(display if isinstance(display, str) else (text or code)),
                        sets=sorted(sets),
                        clinical_status=clinical,
                        verification_status=verification,
                        **dates,
                    )
                )
                if not every:
                    return facts
        return facts

    def _windowed(self, res: dict, sets: frozenset[str], age_days: int | None, windowed: bool) -> frozenset[str]:
        if not windowed:
            return sets
        for name, setting in self.term.codesets.windows:
            limit = self.term.settings.days(setting)
            if name in sets and (age_days is None or age_days > limit):
                self._skip(res, f"{name} dated more than {limit} days ago, or undated: does not count")
                sets = sets - {name}
        return sets


def _reference_low(res: dict) -> tuple[float, str | None] | None:
    """The lower reference limit, when the lab sent one as a plain number with a unit."""
    ranges = as_list(res.get("referenceRange"))
    low = ranges[0].get("low") if ranges and isinstance(ranges[0], dict) else None
    if (
        not isinstance(low, dict)
        or isinstance(low.get("value"), bool)
        or not isinstance(low.get("value"), (int, float))
    ):
        return None
    return float(low["value"]), (low.get("code") or low.get("unit"))
