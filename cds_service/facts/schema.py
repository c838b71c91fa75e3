"""The fact model: every kind of fact the rules can match, its fields and what they mean.

This is the one place that says which fields a fact has. The facts layer builds every fact with
`KINDS[kind].new(...)`, the engine checks every derived finding against `FINDINGS`, and the start-up
lint (`engine/lint.py`) rejects a rule that names a kind, a field or a finding this module does not
declare, so a misspelt field (`m.anlyte`) stops start-up instead of making a `none()` always true.
`legmove-cds facts` prints the model as Markdown (docs/fact-model.md).

Conventions every kind follows:

- numbers are numbers (`int` or `float`, never `bool` and never a numeric string), yes/no fields are
  `bool`; dates a rule compares are whole days before the evaluation date, and -1 means "unknown";
- list fields hold strings only; a closed value set (`Field.values`) applies to each item;
- `id` and `sid` are the engine's own (set by the wrapper), never part of a fact's content.

Site rule modules (EXTRA_RULE_MODULES) declare the findings they derive with `declare_finding`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from cds_service.knowledge.terminology import KNOWLEDGE_DIR

NUMBER = (int, float)
TEXT = (str,)
FLAG = (bool,)
LIST = (list,)
WHOLE = (int,)

ENGINE_FIELDS = ("id", "sid")  # set by the engine wrapper on every fact; never in a fact's content
HOOKS = frozenset({"patient-view", "order-select", "order-sign"})


class FactSchemaError(Exception):
    """A fact, a finding or a rule does not fit the fact model: a bug, never bad patient data (not a
    ValueError, so the facts layer cannot mistake it for an unparseable resource and skip it)."""


def _knowledge(name: str) -> dict:
    with open(KNOWLEDGE_DIR / name, encoding="utf-8") as handle:
        return {k: v for k, v in json.load(handle).items() if not k.startswith("_")}


_DRUGS = _knowledge("drugs.json")
ANALYTES = frozenset(_knowledge("labs.json"))
PROCEDURES = frozenset(_knowledge("procedures.json"))
CODE_SETS = frozenset(_knowledge("codesets.json"))
DRUG_CLASSES = (
    frozenset(_DRUGS["class_titles"])
    | frozenset(_DRUGS["atc_prefixes"])
    | frozenset(k for k in _DRUGS["subclasses"] if not k.startswith("_"))
)
DRUG_GROUPS = frozenset(_DRUGS["groups"])
# The data keys of the prefetch templates (fhir/prefetch.py: queries and OPTIONAL); a test keeps them equal.
DATA_KEYS = frozenset(
    {
        "patient",
        "conditions",
        "labs",
        "plms_index_by_text",
        "service_requests",
        "procedures",
        "reports",
        "medication_requests",
        "medication_statements",
        "medication_request_medications",
        "medication_statement_medications",
    }
)
COMPARATOR_VALUES = frozenset({"=", "<", "<=", ">", ">="})
MATCHED_BY_CODE_OR_TEXT = frozenset({"code", "text"})
MEDICATION_MATCHED_BY = frozenset({"rxnorm-product", "rxnorm-ingredient", "atc", "text"})


@dataclass(frozen=True)
class Field:
    """One field of a fact: its name, the Python types its value may have and what it means."""

    name: str
    types: tuple[type, ...]
    meaning: str
    values: frozenset[str] | None = None  # a closed value set (for a list: of its items), else None
    required: bool = True

    def problem(self, value) -> str | None:
        """Why `value` does not fit this field, or None when it does (on every fact: kept cheap)."""
        if not _is_a(value, self.types):
            return f"holds {type(value).__name__} {_short(value)}, not {_type_names(self.types)}"
        if type(value) is list:
            wrong = [item for item in value if type(item) is not str]
            if wrong:
                return f"holds a list with {type(wrong[0]).__name__} {_short(wrong[0])}; list items are strings"
            outside = [item for item in value if item not in self.values] if self.values is not None else ()
        else:
            outside = [value] if self.values is not None and type(value) is str and value not in self.values else ()
        if outside and self.values is not None:
            return f"holds {outside[0]!r}, not one of {_value_list(self.values)}{did_you_mean(outside[0], self.values)}"
        return None


@dataclass(frozen=True)
class FactKind:
    """A kind of fact (`m.kind == name`) and the fields such a fact has."""

    name: str
    meaning: str
    fields: Mapping[str, Field]

    def new(self, **values) -> dict:
        """The fact as a dict (`kind` first unless given). Raises FactSchemaError for an unknown or
        missing field, a wrong type or a value outside a closed set."""
        given = values.pop("kind", self.name)
        if given != self.name:
            raise FactSchemaError(f"a {self.name!r} fact cannot have kind {given!r}")
        fact = {"kind": self.name, **values}
        self.check(fact)
        return fact

    def check(self, fact: Mapping) -> None:
        """Raise FactSchemaError unless `fact` (content, without the engine's id and sid) fits this kind."""
        problems = []
        fields = self.fields
        for name, value in fact.items():
            spec = fields.get(name)
            if spec is None:
                if name not in ENGINE_FIELDS:
                    problems.append(f"{name!r} is not a field of {self._what()}{did_you_mean(name, fields)}")
                continue
            problem = spec.problem(value)
            if problem:
                problems.append(f"field {name!r} {problem}")
        missing = [] if self._required <= fact.keys() else [n for n in self._required_order if n not in fact]
        if missing:
            problems.append(
                f"missing required field{'s' if len(missing) > 1 else ''} {', '.join(repr(n) for n in missing)}"
            )
        if problems:
            raise FactSchemaError(f"{self._what(article=True)} does not fit the fact model: " + "; ".join(problems))

    @cached_property
    def _required_order(self) -> tuple[str, ...]:
        return tuple(name for name, spec in self.fields.items() if spec.required)

    @cached_property
    def _required(self) -> frozenset[str]:
        return frozenset(self._required_order)

    def field(self, name: str) -> Field:
        """The field called `name`; FactSchemaError naming this kind and a close match otherwise."""
        try:
            return self.fields[name]
        except KeyError:
            raise FactSchemaError(
                f"field {name!r} is not a field of {self._what()}{did_you_mean(name, self.fields)}"
            ) from None

    def _what(self, article: bool = False) -> str:
        """How messages name this kind: "'lab' facts", "a 'lab' fact", "'rls' findings"."""
        name, noun = (
            (self.name[len("finding:") :], "finding") if self.name.startswith("finding:") else (self.name, "fact")
        )
        return f"a {name!r} {noun}" if article else f"{name!r} {noun}s"


# ---- helpers ------------------------------------------------------------------------------


def _is_a(value, types: tuple[type, ...]) -> bool:
    kind = type(value)
    if kind is bool:
        return bool in types  # bool is an int to Python, never a number to the model
    if kind in types:
        return True
    return value is not None and isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "int", float: "float", str: "str", bool: "bool", list: "list", type(None): "None"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _value_list(values: frozenset[str]) -> str:
    ordered = sorted(values)
    shown = ", ".join(repr(v) for v in ordered[:8])
    return f"{{{shown}{', ...' if len(ordered) > 8 else ''}}}"


def close_match(name: str, candidates) -> str | None:
    """The candidate most like `name` (a likely typo), or None."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: str, candidates) -> str:
    """ " (did you mean 'x'?)" for the closest candidate, or nothing: the tail of every schema and lint message."""
    match = close_match(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""


def _fields(*fields: Field) -> Mapping[str, Field]:
    names = [f.name for f in fields]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise FactSchemaError(f"fields declared twice: {duplicated}")
    return MappingProxyType({f.name: f for f in fields})


def _kind(name: str, meaning: str, *fields: Field) -> FactKind:
    return FactKind(name, meaning, _fields(KIND_FIELD(name), *fields))


def KIND_FIELD(name: str) -> Field:  # noqa: N802 - reads as a constant in the declarations below
    return Field(
        "kind", TEXT, "What kind of fact this is; rules select facts by it (`m.kind == ...`).", values=frozenset({name})
    )


def _ref(what: str, required: bool = True) -> Field:
    return Field(
        "resource_ref", TEXT, f"The FHIR reference ('Type/id') of {what}, as cards cite it.", required=required
    )


# ---- the base facts (built by the facts package from the request) ---------------------------

CONTEXT = _kind(
    "context",
    "The hook call itself: exactly one per evaluation.",
    Field("hook", TEXT, "The CDS hook being answered.", values=HOOKS),
)

DATA_GAP = _kind(
    "data_gap",
    "A data key whose resources could not all be read (later pages failed, or nothing could be "
    "read at all): absence rules over that key stay silent.",
    Field("key", TEXT, "The prefetch key (data key) that is incomplete.", values=DATA_KEYS),
)

PATIENT = _kind(
    "patient",
    "The patient: exactly one per evaluation, also when no Patient resource could be read.",
    Field("age_years", WHOLE, "Age in whole years when the birth date gives it exactly, else -1."),
    Field("age_min", WHOLE, "The youngest age the (possibly partial) birth date allows, or -1 when unknown."),
    Field("age_max", WHOLE, "The oldest age the (possibly partial) birth date allows, or -1 when unknown."),
    Field("child", FLAG, "True when every age the birth date allows is under 18."),
    Field("age_known", FLAG, "True when the birth date puts the patient on one side of 18 (child or adult)."),
    Field("deceased", FLAG, "True when the chart records a death (deceasedBoolean true or any deceasedDateTime)."),
)

CONDITION = _kind(
    "condition",
    "An active problem-list entry (or a coded reason on an order being placed) that falls in at "
    "least one code set; refuted, entered-in-error and inactive conditions never become facts.",
    _ref("the Condition, or of the draft order whose coded reason this is"),
    Field("system", TEXT, "The coding system of the matched code, or 'text' when matched by a listed phrase."),
    Field("code", TEXT, "The matched code, or 'text' when matched by a listed phrase."),
    Field("display", TEXT, "The condition's name as the chart gives it (display, text or code)."),
    Field("sets", LIST, "The code sets (knowledge/codesets.json) the code falls in, sorted.", values=CODE_SETS),
    Field(
        "clinical_status",
        TEXT,
        "The clinical status (only active ones become facts).",
        values=frozenset({"active", "recurrence", "relapse"}),
    ),
    Field(
        "verification_status",
        TEXT,
        "The verification status code as sent, 'unconfirmed' when absent, or "
        "'reason for this order' for an order's coded reason.",
    ),
    Field("recorded", TEXT, "The recorded (else onset) date as YYYY-MM-DD (or a partial date), or 'undated'."),
    Field("recorded_days_ago", WHOLE, "Days from the recorded (else onset) date to the evaluation date; -1 unknown."),
    Field("onset_days_ago", WHOLE, "Days from the onset (else recorded) date to the evaluation date; -1 unknown."),
)

LAB = _kind(
    "lab",
    "The latest final result per analyte within its lookback. `usable` says whether it carries a value "
    "in the analyte's canonical unit; a resulted panel or questionnaire has no value.",
    Field("analyte", TEXT, "The analyte (knowledge/labs.json) the result was recognised as.", values=ANALYTES),
    _ref("the Observation"),
    Field("loinc", TEXT, "The code (LOINC or local) or the text the result was recognised by."),
    Field("matched_by", TEXT, "How it was recognised: by its code or by its name.", values=MATCHED_BY_CODE_OR_TEXT),
    Field("date", TEXT, "The effective date, YYYY-MM-DD."),
    Field("days_ago", WHOLE, "Days from the effective date to the evaluation date (0 for today or tomorrow)."),
    Field("usable", FLAG, "True when `value` holds a number in the canonical `unit` that rules may compare."),
    Field(
        "unit_assumed",
        FLAG,
        "Present (true) when a text result gave no unit and the canonical unit was assumed.",
        required=False,
    ),
    Field("raw_value", NUMBER, "The number as reported, before unit conversion.", required=False),
    Field("raw_unit", TEXT, "The unit as reported, or '(none)'.", required=False),
    Field(
        "comparator",
        TEXT,
        "'=' for an exact value, else the bound the value is ('<10' is below 10).",
        values=COMPARATOR_VALUES,
        required=False,
    ),
    Field(
        "value_source",
        TEXT,
        "Where the number was read: valueQuantity or a valueString.",
        values=frozenset({"quantity", "text"}),
        required=False,
    ),
    Field(
        "value", NUMBER, "The value in the canonical unit, rounded to 3 decimals (only when usable).", required=False
    ),
    Field("unit", TEXT, "The analyte's canonical unit (only when usable).", required=False),
    Field(
        "below_reference",
        FLAG,
        "Whether the value is below the lower reference limit the lab sent in the same "
        "unit; absent when no such limit was sent.",
        required=False,
    ),
)

UNREADABLE_RESULT = _kind(
    "unreadable_result",
    "A final result that counts by status and date but whose value cannot be used (no "
    "number, no value, or a unit the analyte is not reported in): never 'on file', named "
    "by the absence rule that then fires.",
    Field("analyte", TEXT, "The analyte the result was recognised as.", values=ANALYTES),
    _ref("the Observation"),
    Field("loinc", TEXT, "The code or text the result was recognised by."),
    Field("matched_by", TEXT, "How it was recognised: by its code or by its name.", values=MATCHED_BY_CODE_OR_TEXT),
    Field("date", TEXT, "The effective date, YYYY-MM-DD."),
    Field("days_ago", WHOLE, "Days from the effective date to the evaluation date."),
    Field("reason", TEXT, "Why the value cannot be used, in words."),
    Field("raw_text", TEXT, "The value as reported (text or number), or '(none)'."),
    Field("raw_unit", TEXT, "The unit as reported, or '(none)'."),
)

PENDING_TEST = _kind(
    "pending_test",
    "A test drawn or ordered but not resulted: a preliminary result, or an active or draft lab order.",
    Field("analyte", TEXT, "The analyte the test measures.", values=ANALYTES),
    _ref("the Observation or ServiceRequest"),
    Field(
        "status",
        TEXT,
        "The status of the result or order ('draft' for an order being placed).",
        values=frozenset({"preliminary", "registered", "active", "draft"}),
    ),
    Field(
        "origin",
        TEXT,
        "'result' for a preliminary result, 'chart' for a chart order, 'draft' for an order being placed.",
        values=frozenset({"result", "chart", "draft"}),
    ),
)

ORDER = _kind(
    "order",
    "A procedure order (polysomnography, EMG, imaging, referral) on the chart or being placed.",
    Field(
        "procedure", TEXT, "The procedure (knowledge/procedures.json) the order was recognised as.", values=PROCEDURES
    ),
    Field("matched_by", TEXT, "How it was recognised: by its code or by its name.", values=MATCHED_BY_CODE_OR_TEXT),
    Field(
        "origin",
        TEXT,
        "'chart' for a ServiceRequest on the chart, 'draft' for an order being placed.",
        values=frozenset({"chart", "draft"}),
    ),
    Field("selected", FLAG, "True for a draft the clinician selected (every draft on order-sign); false on the chart."),
    Field(
        "status",
        TEXT,
        "The order status ('draft' for an order being placed).",
        values=frozenset({"active", "draft", "completed"}),
    ),
    _ref("the ServiceRequest"),
    Field("name", TEXT, "The order's name as sent, else the procedure's title."),
    Field("days_ago", WHOLE, "Days from authoredOn to the evaluation date; -1 unknown."),
    Field("unclassified_reasons", WHOLE, "How many of the order's reason codings fall in no known code set."),
)

PROCEDURE_DONE = _kind(
    "procedure_done",
    "A completed Procedure or a final DiagnosticReport of a known procedure (a prior EMG, say).",
    Field("procedure", TEXT, "The procedure it was recognised as.", values=PROCEDURES),
    Field("matched_by", TEXT, "How it was recognised: by its code or by its name.", values=MATCHED_BY_CODE_OR_TEXT),
    _ref("the Procedure or DiagnosticReport"),
    Field("date", TEXT, "When it was performed (or reported), as sent, first 10 characters."),
    Field("days_ago", WHOLE, "Days from that date to the evaluation date (never negative)."),
)

_DRUG_FIELDS = (
    Field(
        "origin",
        TEXT,
        "'chart' for an active medication, 'recent' for one stopped or completed within the "
        "new-start window, 'draft' for an order being placed.",
        values=frozenset({"chart", "recent", "draft"}),
    ),
    Field("selected", FLAG, "True for a draft the clinician selected (every draft on order-sign); false otherwise."),
    Field("classes", LIST, "The drug classes it belongs to (knowledge/drugs.json).", values=DRUG_CLASSES),
    Field("ingredients", LIST, "Its ingredients (RxNorm ingredient codes, 'atc:<code>' or a name)."),
    Field("matched_by", TEXT, "How it was recognised.", values=MEDICATION_MATCHED_BY),
    Field("code", TEXT, "The code it was recognised by, or 'none'."),
    Field("since", TEXT, "When it was ordered or started, YYYY-MM-DD, or 'undated'."),
)

MEDICATION = _kind(
    "medication",
    "A medication in a class some rule knows, on the chart (MedicationRequest or "
    "MedicationStatement) or being ordered.",
    *_DRUG_FIELDS[:2],
    _ref("the MedicationRequest or MedicationStatement"),
    Field(
        "resource_type",
        TEXT,
        "The FHIR resource type it came from.",
        values=frozenset({"MedicationRequest", "MedicationStatement"}),
    ),
    Field("name", TEXT, "The product's name (from the drug table, else as sent)."),
    _DRUG_FIELDS[2],
    Field("groups", LIST, "The drug groups its classes fall in (rls_drug, dopaminergic, ...).", values=DRUG_GROUPS),
    *_DRUG_FIELDS[3:],
    Field(
        "started_days_ago",
        WHOLE,
        "Days from authoredOn (else effective or asserted date) to the evaluation date; -1 unknown.",
    ),
    Field(
        "indications",
        LIST,
        "Draft orders only: the order's coded reasons as labels, e.g. 'Generalized anxiety disorder (F41.1)'.",
        required=False,
    ),
    Field(
        "indication_sets",
        LIST,
        "Draft orders only: the code sets the order's reasons fall in.",
        values=CODE_SETS,
        required=False,
    ),
)

# Configuration as a fact (facts/build.py params_fact): every numeric or yes/no setting of
# knowledge/settings.json (numbers as floats), the active iron profile and both profiles' numbers.
_PARAM_MEANINGS = {
    "ferritin_lookback_days": "How far back (days) a ferritin or TSAT result counts (R1, R2).",
    "fasciculation_lab_lookback_days": "How far back (days) a first-tier lab counts for fasciculations (R11).",
    "screening_lookback_days": "How far back (days) a GAD-7 or PHQ-9 counts (R13).",
    "metabolic_lookback_days": "How far back (days) a metabolic lab counts as done for myoclonus (R14, R16).",
    "metabolic_value_lookback_days": "How recent (days) a low value must be to count as a metabolic cause (R14).",
    "renal_lookback_days": "How far back (days) a renal result counts (R23).",
    "plms_index_lookback_days": "How far back (days) a PLMS index counts (R7).",
    "prior_emg_window_days": "How recent (days) a prior EMG must be for a repeat EMG to be questioned (R12).",
    "akathisia_window_days": "The most days between starting a dopamine antagonist and the restlessness (R17).",
    "gbs_onset_window_days": "How recent (days) GBS or its pattern must be (R9).",
    "acute_deficit_window_days": "How recent (days) a new deficit must be (R10).",
    "new_start_window_days": "The window (days) within which a dopaminergic order counts as recent therapy (R20).",
    "renal_dose_egfr_threshold": "eGFR (mL/min/1.73 m2) below which renal dosing is flagged (R23).",
    "plms_index_threshold_adult": "PLMS index (per hour) above which an adult's index is raised (R7).",
    "plms_index_threshold_child": "PLMS index (per hour) above which a child's index is raised (R7).",
    "show_guideline_disagreement": "Whether R2 says when the AASM 2024 profile would advise iron and the seed one not.",
    "r8_weak_red_flags": "Whether nonspecific findings (R29.2, R53.1) count as ALS red flags (R8).",
    "r13_skip_if_diagnosed": "Whether R13 skips a screen for a disorder already coded.",
    "cbc_accepts_hb_only": "Whether a haemoglobin alone counts as a CBC (R11).",
    "r7_documentation_check": "Whether R7 checks PLMD documentation (variant A).",
    "pregnancy_max_days": "How long (days) after its onset a pregnancy counts (R19, R20).",
    "suppress_overridden_days": "Days a card overridden by the clinician stays suppressed.",
    "suppress_accepted_days": "Days a card whose suggestion was accepted stays suppressed.",
    "order_sign_dedup_hours": "Hours within which order-sign does not repeat an order-select card.",
    "profile": "The active iron profile (setting iron_profile), e.g. 'seed' or 'aasm2024'.",
    "profile_title": "The active iron profile's title.",
    "profile_source": "The active iron profile's source, as cards cite it.",
    "seed_ferritin_iron_indicated_below": "Seed profile: ferritin (ng/mL) below which iron is indicated.",
    "aasm2024_ferritin_iron_indicated_at_or_below": "AASM 2024 profile: ferritin (ng/mL) at or below which iron is "
    "indicated.",
    "aasm2024_tsat_iron_indicated_below": "AASM 2024 profile: TSAT (%) below which iron is indicated.",
    "aasm2024_iv_only_above": "AASM 2024 profile: ferritin (ng/mL) above which only IV iron is suggested.",
    "aasm2024_iv_only_up_to": "AASM 2024 profile: ferritin (ng/mL) up to which IV iron is suggested.",
    "aasm2024_child_ferritin_iron_indicated_below": "AASM 2024 profile: a child's ferritin (ng/mL) below which iron "
    "is indicated.",
}
_PARAM_TEXT = {"profile", "profile_title", "profile_source"}
_PARAM_FLAGS = {
    "show_guideline_disagreement",
    "r8_weak_red_flags",
    "r13_skip_if_diagnosed",
    "cbc_accepts_hb_only",
    "r7_documentation_check",
}

PARAMS = _kind(
    "params",
    "The configuration in force (knowledge/settings.json and KNOWLEDGE_OVERRIDES): exactly one per "
    "evaluation, so rules compare against settings, not literals. Numbers are floats.",
    *(
        Field(name, TEXT if name in _PARAM_TEXT else FLAG if name in _PARAM_FLAGS else (float,), meaning)
        for name, meaning in _PARAM_MEANINGS.items()
    ),
)

# ---- findings (derived by rules/ with @derivation; checked in engine/wrapper.py) ----------------

FINDING = _kind(
    "finding",
    "A conclusion a derivation drew from other facts; `name` says which (each finding's own "
    "fields are listed under Findings). Findings are asserted by the engine, never by the facts layer.",
    Field("name", TEXT, "The finding's name, as `produces=` of the derivation declares it."),
    Field("rule", TEXT, "The id of the derivation that drew it."),
    Field("basis", LIST, "The engine ids of the facts the derivation matched."),
)

_FINDING_COMMON = tuple(FINDING.fields.values())


def _finding(name: str, meaning: str, fields: tuple[Field, ...]) -> FactKind:
    if any(f.name in FINDING.fields for f in fields):
        raise FactSchemaError(
            f"finding {name!r} may not redeclare {sorted(set(FINDING.fields) & {f.name for f in fields})}"
        )
    name_field = Field("name", TEXT, f"The finding's name: {name!r}.", values=frozenset({name}))
    common = [name_field if f.name == "name" else f for f in _FINDING_COMMON]
    return FactKind(f"finding:{name}", meaning, _fields(*common, *fields))


FINDINGS: dict[str, FactKind] = {}


def declare_finding(name: str, meaning: str, **fields: Field) -> FactKind:
    """Declare a finding and its own fields (besides kind, name, rule and basis); for site rule
    modules, next to the derivations that produce it. The keyword is the field's name (a Field whose
    `name` differs is an error). Declaring a name twice with other fields is an error."""
    for key, spec in fields.items():
        if not isinstance(spec, Field):
            raise FactSchemaError(f"finding {name!r}: field {key!r} must be a Field, not {type(spec).__name__}")
        if spec.name != key:
            raise FactSchemaError(f"finding {name!r}: field {key!r} is declared with the name {spec.name!r}")
    kind = _finding(name, meaning, tuple(fields.values()))
    known = FINDINGS.get(name)
    if known is not None:
        if known == kind:
            return known  # a module imported again
        raise FactSchemaError(f"finding {name!r} is already declared with other fields")
    FINDINGS[name] = kind
    return kind


def finding_fact(name: str, fields: Mapping, *, rule: str, basis: list[str], checked: bool = True) -> dict:
    """A derivation's result as a finding fact, checked against FINDINGS[name] (unless not
    `checked`: engine probes over toy facts). The engine owns kind, name, rule, basis, id and sid."""
    clash = set(fields) & (set(FINDING.fields) | set(ENGINE_FIELDS))
    if clash:
        raise FactSchemaError(f"rule {rule}: a finding may not set {sorted(clash)}: the engine owns those fields")
    fact = dict(fields, kind="finding", name=name, rule=rule, basis=list(basis))
    if checked:
        kind = FINDINGS.get(name)
        if kind is None:
            raise FactSchemaError(f"rule {rule}: finding {name!r} is not declared{did_you_mean(name, FINDINGS)}")
        try:
            kind.check(fact)
        except FactSchemaError as exc:
            raise FactSchemaError(f"rule {rule}: {exc}") from None
    return fact


def _f(name: str, types, meaning: str, values=None, required: bool = True) -> Field:
    return Field(name, types, meaning, frozenset(values) if values is not None else None, required)


_SOURCE = _f("resource_ref", TEXT, "The FHIR reference of the resource it rests on.")
_TRIGGER_REF = _f(
    "resource_ref", TEXT, "On order-select: the selected draft medication that triggered the review.", required=False
)


def _drug(*extra: Field) -> dict[str, Field]:
    """The drug identity a finding carries (rules/common.py drug_fields)."""
    fields = [
        _f("resource_ref", TEXT, "The MedicationRequest or MedicationStatement of the drug."),
        _f("label", TEXT, "The drug's name (a finding's `name` is the finding's)."),
        *_DRUG_FIELDS,
        *extra,
    ]
    return {f.name: f for f in fields}


def _present(name: str, what: str) -> None:
    declare_finding(
        name,
        f"{what} is on the problem list (suspected or confirmed) or is the reason for the order being placed.",
        resource_ref=_f("resource_ref", TEXT, "The Condition (or draft order) coded with it."),
    )


def _review_due(name: str, what: str, order_trigger: frozenset[str]) -> None:
    declare_finding(
        name,
        f"{what} is due on this hook call: on opening the chart, or on order-select when a matching draft is selected.",
        trigger=_f(
            "trigger",
            TEXT,
            "What started the review: 'patient-view', or on order-select what was selected.",
            {"patient-view", *order_trigger},
        ),
        resource_ref=_TRIGGER_REF,
    )


_present("rls", "Restless legs syndrome")
_present("plmd", "Periodic limb movement disorder")
_present("leg_movement_complaint", "A leg-movement complaint")
_present("leg_cramp", "Leg cramps")
_present("fasciculation", "Fasciculation")
_present("myoclonus", "Myoclonus")

_review_due("iron_check_due", "An iron review", frozenset({"rls_drug", "iron"}))
_review_due("fasciculation_review_due", "A fasciculation review", frozenset({"order-select"}))
_review_due("rls_review_due", "An RLS mimics review", frozenset({"order-select"}))
_review_due("akathisia_review_due", "An akathisia review", frozenset({"order-select"}))

_VERDICTS = {"indicated", "iv_only", "in_range", "unknown"}
declare_finding(
    "iron_stores",
    "RLS with a usable ferritin (and TSAT when on file): the iron verdict of both profiles.",
    verdict=_f(
        "verdict",
        TEXT,
        "The verdict shown: the active profile's, or 'disagreement' (seed in range, AASM 2024 indicated).",
        _VERDICTS | {"disagreement"},
    ),
    seed_verdict=_f("seed_verdict", TEXT, "The seed profile's verdict.", _VERDICTS),
    aasm_verdict=_f("aasm_verdict", TEXT, "The AASM 2024 profile's verdict.", _VERDICTS),
    profile=_f("profile", TEXT, "The active iron profile."),
    ferritin=_f("ferritin", NUMBER, "The ferritin value (ng/mL)."),
    ferritin_comparator=_f(
        "ferritin_comparator", TEXT, "The ferritin's comparator ('=' when exact).", COMPARATOR_VALUES
    ),
    tsat=_f("tsat", NUMBER, "The TSAT value (%), or -1.0 when none is on file."),
    tsat_comparator=_f("tsat_comparator", TEXT, "The TSAT's comparator ('=' when exact or absent).", COMPARATOR_VALUES),
    child=_f("child", FLAG, "Whether the patient is a child (the child threshold applies)."),
    age_known=_f("age_known", FLAG, "Whether the patient's age group is known."),
    by_tsat=_f("by_tsat", FLAG, "True when only the TSAT (not the ferritin) makes iron indicated under AASM 2024."),
)
declare_finding(
    "dopaminergic_draft",
    "A dopamine agonist or levodopa is being ordered (cabergoline or bromocriptine only without hyperprolactinaemia).",
    **_drug(),
)
declare_finding(
    "renally_cleared_draft",
    "A selected draft of a renally cleared RLS or myoclonus drug (gabapentinoid, pramipexole, levetiracetam).",
    **_drug(),
)
declare_finding(
    "akathisia_suspected",
    "A dopamine antagonist started shortly before RLS or restlessness began, with no akathisia coded.",
    **_drug(
        _f("lead_days", WHOLE, "Days from starting the drug to the onset of the symptom."),
        _f("symptom_ref", TEXT, "The Condition of the RLS or restlessness."),
    ),
)
declare_finding(
    "red_flag",
    "An ALS red flag (weakness, atrophy, dysphagia, dysarthria; nonspecific ones when r8_weak_red_flags "
    "is on) is coded.",
    resource_ref=_f("resource_ref", TEXT, "The Condition coded with the red flag."),
    display=_f("display", TEXT, "The condition's name."),
    recorded_days_ago=_f("recorded_days_ago", WHOLE, "Days since it was recorded; -1 unknown."),
    flags=_f("flags", LIST, "The red flags it names, in words (weakness, atrophy, ...)."),
)
declare_finding(
    "gbs_suspected",
    "Guillain-Barre syndrome coded recently, or its pattern (recent weakness with an abnormal reflex).",
    resource_ref=_f("resource_ref", TEXT, "The Condition it rests on."),
    basis_text=_f("basis_text", TEXT, "What it rests on, in words."),
)
declare_finding(
    "first_tier_missing",
    "Fasciculation with a first-tier test neither resulted within the lookback nor pending.",
    test=_f(
        "test", TEXT, "The missing test, as the card names it.", {"glucose/HbA1c", "CBC", "CMP", "B12", "TSH", "SPEP"}
    ),
)
declare_finding(
    "screen_missing",
    "Fasciculation without an anxiety or depression screen within the lookback.",
    test=_f("test", TEXT, "The missing screen, as the card names it.", {"GAD-7", "PHQ-9"}),
)
declare_finding(
    "imaging_not_indicated",
    "A selected imaging draft for isolated fasciculations without the findings that would justify it.",
    site=_f("site", TEXT, "Which imaging: lumbar MRI or brain imaging.", {"lumbar", "brain"}),
    resource_ref=_f("resource_ref", TEXT, "The draft ServiceRequest."),
    label=_f("label", TEXT, "The draft's name."),
)
declare_finding(
    "metabolic_cause",
    "Myoclonus with a metabolic cause coded or measured.",
    cause=_f(
        "cause", TEXT, "The cause, in words.", {"kidney failure", "liver failure", "hyponatraemia", "hypoglycaemia"}
    ),
    resource_ref=_f("resource_ref", TEXT, "The Condition or Observation it rests on."),
)
_OPTIONAL_DRUG = {
    name: _f(
        spec.name,
        spec.types,
        "When the cause is a drug: " + spec.meaning[0].lower() + spec.meaning[1:],
        spec.values,
        required=False,
    )
    for name, spec in _drug().items()
    if name != "resource_ref"
}
declare_finding(
    "myoclonus_cause",
    "Myoclonus with a causative drug (active or being ordered) or alcohol withdrawal.",
    cause=_f("cause", TEXT, "'drug' or 'alcohol'.", {"drug", "alcohol"}),
    resource_ref=_f("resource_ref", TEXT, "The drug's MedicationRequest/Statement or the Condition."),
    **_OPTIONAL_DRUG,
)
declare_finding(
    "metabolic_screen_incomplete",
    "Myoclonus with a part of the metabolic screen not done within the lookback.",
    gap=_f("gap", TEXT, "The missing part of the screen.", {"glucose", "sodium", "renal", "liver"}),
)
declare_finding(
    "plm_case",
    "A PLM criteria case: B, a PLMS index above the threshold without a complaint; A, PLMD coded "
    "without what it needs (r7_documentation_check).",
    variant=_f("variant", TEXT, "'A' (PLMD documentation) or 'B' (index without complaint).", {"A", "B"}),
    resource_ref=_f("resource_ref", TEXT, "The PLMS index Observation (B) or the PLMD Condition (A)."),
    index=_f("index", NUMBER, "Variant B: the PLMS index (per hour).", required=False),
    threshold=_f("threshold", NUMBER, "Variant B: the threshold it is above.", required=False),
    age_known=_f(
        "age_known", FLAG, "Variant B: whether the age group (and so the threshold) is known.", required=False
    ),
    missing=_f("missing", TEXT, "Variant A: what the PLMD diagnosis lacks, in words.", required=False),
)

BUILTIN_FINDINGS = frozenset(FINDINGS)

KINDS: Mapping[str, FactKind] = MappingProxyType(
    {
        k.name: k
        for k in (
            CONTEXT,
            DATA_GAP,
            PATIENT,
            PARAMS,
            CONDITION,
            LAB,
            UNREADABLE_RESULT,
            PENDING_TEST,
            ORDER,
            PROCEDURE_DONE,
            MEDICATION,
            FINDING,
        )
    }
)


# ---- the model as Markdown (`legmove-cds facts`, docs/fact-model.md) ---------------------------


def _type_cell(spec: Field) -> str:
    return "list of str" if spec.types == LIST else _type_names(spec.types)


def _values_cell(spec: Field) -> str:
    if spec.values is None:
        return ""
    return ", ".join(f"`{v}`" for v in sorted(spec.values))


def _field_rows(kind: FactKind, skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| Field | Type | Required | Values | Meaning |", "|---|---|---|---|---|"]
    for spec in kind.fields.values():
        if spec.name in skip:
            continue
        cells = [
            f"`{spec.name}`",
            _type_cell(spec),
            "yes" if spec.required else "no",
            _values_cell(spec),
            spec.meaning.replace("|", "\\|"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def model_markdown(producers: Mapping[str, list[str]] | None = None) -> str:
    """The fact model for rule authors: each kind's fields, then each finding's, with the rules that
    derive it when `producers` (finding -> derivation ids) is given."""
    lines = [
        "# legmove-cds fact model",
        "",
        "Generated from `cds_service/facts/schema.py` by `legmove-cds facts`. Every fact a rule can match is one of "
        'the kinds below; a rule selects facts by `m.kind == "..."` and reads only the fields listed for that kind. '
        "The facts layer builds every fact from this model, each finding is checked against it when it is derived, "
        "and at start-up a rule that names a kind, field, finding or closed-set value the model lacks stops the "
        "service, with a message naming the rule, the kind and the field (and a close match).",
        "",
        "Conventions:",
        "",
        "- Numbers are `int` or `float`, never strings; yes/no fields are `bool`, never 0 or 1.",
        "- Dates that rules compare are whole days before the evaluation date (`days_ago`); -1 means unknown.",
        '- List fields hold strings; test them with `m.sets.anyItem(item == "RLS")` or `allItems(...)`. A closed '
        "value set applies to each item.",
        "- `id` and `sid` are the engine's own; `kind`, `name`, `rule` and `basis` of a finding are set by the engine.",
        "- A site rule module (`EXTRA_RULE_MODULES`) declares each finding it derives with `declare_finding(name, "
        "meaning, field=Field(...), ...)` before its derivations; its rules are checked like the bundled ones.",
        "",
        "## Kinds of fact",
        "",
        "| Kind | Meaning |",
        "|---|---|",
    ]
    lines += [f"| [`{k.name}`](#{k.name}) | {k.meaning} |" for k in KINDS.values()]
    for kind in KINDS.values():
        lines += ["", f"### {kind.name}", "", kind.meaning, "", *_field_rows(kind)]
    lines += [
        "",
        "## Findings",
        "",
        "Every finding has the fields of the `finding` kind (`kind`, `name`, `rule`, `basis`) and its own fields "
        'below. Match one with `(m.kind == "finding") & (m.name == "...")`.',
        "",
    ]
    for name in sorted(FINDINGS):
        kind = FINDINGS[name]
        derived_by = (producers or {}).get(name)
        by = f" Derived by {', '.join(f'`{r}`' for r in derived_by)}." if derived_by else ""
        own = [spec for spec in kind.fields.values() if spec.name not in FINDING.fields]
        lines += [f"### finding `{name}`", "", kind.meaning + by, ""]
        lines += _field_rows(kind, skip=tuple(FINDING.fields)) if own else ["No fields of its own."]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
