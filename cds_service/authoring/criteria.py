"""The criteria vocabulary rule modules are written in: inclusion and exclusion criteria in clinical words.

Each function returns an ordinary durable-rules expression (a condition, or a `none()` of one), so the
engine wrapper, its lint and its workarounds see the same plain DSL as before. A rule reads as its
criteria::

    when=all_of(inclusion=[finding("rls", alias="rls"), finding("iron_check_due", alias="due")],
                exclusion=[result("ferritin"), pending("ferritin"), data_gap("labs", "service_requests")])

Every argument is checked when the rule module is imported: code set names against the knowledge code
sets, analytes against the lab knowledge, drug groups and classes against the drug knowledge,
procedures against the procedure knowledge, hooks against the three hooks, data keys against the
prefetch keys, settings against the knowledge settings, and fact kinds and fields against the fact
schema (`cds_service.facts.schema`). A misspelt name raises `CriteriaError` naming it and the closest
known name, so a typo stops start-up instead of making a `none()` always true.

The vocabulary also removes the DSL's traps from rule modules: booleans are compared with `== True`
here only, every operand is parenthesised, an alias is always bound to the whole condition, and a
comparison with another alias is never placed after an `|` group (durable-rules 2.0.28 ignores it
there). "Within N days" means dated and at most N days ago; lab results and completed procedures
are always dated (the facts layer drops undated ones), so for them only the upper bound is compiled.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Iterable
from functools import cache, reduce
from typing import Any

from durable.lang import c, item, m, none, when_all

from cds_service.authoring.rulebook import HOOKS, RESERVED_ALIASES
from cds_service.facts.schema import FINDINGS, KINDS, FactSchemaError
from cds_service.knowledge.terminology import KNOWLEDGE_DIR

ORDER_HOOKS = ("order-select", "order-sign")


class CriteriaError(ValueError):
    """A criterion names something the knowledge or the fact schema does not have; start-up stops."""


# ---- what the names are checked against ------------------------------------------------------


def _load(name: str) -> dict:
    with open(KNOWLEDGE_DIR / name, encoding="utf-8") as handle:
        return json.load(handle)


def _public(data: dict) -> frozenset[str]:
    return frozenset(k for k in data if not k.startswith("_"))


@cache
def known(what: str) -> frozenset[str]:
    """The names a criterion argument of type `what` may take (read once from the knowledge files)."""
    if what == "code set":
        return _public(_load("codesets.json"))
    if what == "analyte":
        return _public(_load("labs.json"))
    if what == "procedure":
        return _public(_load("procedures.json"))
    if what == "drug group":
        return _public(_load("drugs.json")["groups"])
    if what == "drug class":
        drugs = _load("drugs.json")
        return _public(drugs["class_titles"]) | _public(drugs["subclasses"])
    if what == "ingredient":  # RxNorm ingredient codes of the product table and the extra ingredients
        with open(KNOWLEDGE_DIR / "rxnorm_leg_movement_drug_products.csv", encoding="utf-8", newline="") as handle:
            table = frozenset(row["ingredient_rxcui"] for row in csv.DictReader(handle))
        return table | _public(_load("drugs.json")["extra_ingredients"])
    if what == "hook":
        return frozenset(HOOKS)
    if what == "data key":
        return frozenset(KINDS["data_gap"].field("key").values or ())
    if what == "setting":
        return frozenset(KINDS["params"].fields) - {"kind"}
    if what == "numeric setting":
        return frozenset(
            name
            for name, spec in KINDS["params"].fields.items()
            if name != "kind" and (int in spec.types or float in spec.types)
        )
    raise KeyError(what)


def _check(what: str, names: Iterable[str], where: str) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise CriteriaError(f"{where}: name at least one {what}")
    allowed = known(what)
    for name in names:
        if not isinstance(name, str):
            raise CriteriaError(f"{where}: a {what} is a name (a string), not {name!r}")
        if name not in allowed:
            raise CriteriaError(f"{where}: unknown {what} {name!r}{_did_you_mean(name, allowed)}")
    return names


def _did_you_mean(name: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.5)
    if not close:
        close = [a for a in sorted(allowed) if a.lower() == name.lower()][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_fields(kind: str, fields: Iterable[str], where: str) -> None:
    schema = KINDS[kind] if kind in KINDS else FINDINGS[kind]
    for name in fields:
        try:
            schema.field(name)
        except FactSchemaError as exc:
            raise CriteriaError(f"{where}: {exc}") from None


def _check_values(kind: str, where: dict, label: str) -> None:
    """Field filters name fields the fact has, with values of the field's type and closed set."""
    _check_fields(kind, where, label)
    schema = KINDS[kind] if kind in KINDS else FINDINGS[kind]
    for name, wanted in where.items():
        values = (
            wanted.values
            if isinstance(wanted, _OneOf)
            else ((wanted.value,) if isinstance(wanted, _OtherThan) else (wanted,))
        )
        for value in values:
            problem = schema.field(name).problem(value)
            if problem:
                raise CriteriaError(f"{label}: {name}= {problem}")


def _check_alias(alias: str | None, where: str) -> None:
    if alias is None:
        return
    if not (isinstance(alias, str) and alias.isidentifier()) or alias.startswith("_"):
        raise CriteriaError(f"{where}: alias {alias!r} is not a plain name")
    if alias in RESERVED_ALIASES:
        raise CriteriaError(f"{where}: alias {alias!r} clashes with the engine's action closure; choose another name")


# The fields the vocabulary itself compiles, per kind: checked against the fact schema on import, so a
# field renamed in the schema breaks here rather than leaving a criterion that never matches.
COMPILED_FIELDS = {
    "finding": ("name",),
    "context": ("hook",),
    "patient": (),
    "params": (),
    "data_gap": ("key",),
    "condition": ("sets", "verification_status", "onset_days_ago", "recorded_days_ago"),
    "lab": ("analyte", "usable", "days_ago", "value", "comparator"),
    "pending_test": ("analyte",),
    "medication": ("origin", "selected", "started_days_ago", "groups", "classes", "ingredients"),
    "order": ("origin", "selected", "procedure", "unclassified_reasons", "days_ago"),
    "procedure_done": ("procedure", "days_ago"),
}
for _kind_name, _field_names in COMPILED_FIELDS.items():
    _check_fields(_kind_name, _field_names, "cds_service.authoring.criteria")


# ---- values compared with another fact --------------------------------------------------------


class _Reference:
    """A number read from another bound fact at match time (a setting, or a field of an earlier alias)."""

    def __init__(self, alias: str, field: str, text: str):
        self.alias, self.field, self.text = alias, field, text

    def dsl(self):
        return getattr(getattr(c, self.alias), self.field)

    def __repr__(self) -> str:
        return self.text


def setting(name: str) -> _Reference:
    """A numeric setting (a field of the `params` fact) compared at match time: the rule must include `params()`."""
    _check("setting", (name,), "setting()")
    if name not in known("numeric setting"):
        raise CriteriaError(f"setting(): {name!r} is not a number; a yes/no setting goes in params({name}=True)")
    return _Reference("params", name, f"setting({name!r})")


def value_of(alias: str, field: str) -> _Reference:
    """A field of the fact an earlier inclusion criterion bound to `alias` (checked by `all_of`)."""
    _check_alias(alias, "value_of()")
    if not isinstance(field, str) or not field.isidentifier():
        raise CriteriaError(f"value_of(): field {field!r} is not a plain name")
    return _Reference(alias, field, f"value_of({alias!r}, {field!r})")


def _operand(value, where: str):
    if isinstance(value, _Reference):
        return value.dsl()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CriteriaError(f"{where}: expected a number, setting(...) or value_of(...), got {value!r}")
    return value


class _OneOf:
    def __init__(self, values: tuple):
        self.values = values


class _OtherThan:
    def __init__(self, value):
        self.value = value


def any_of(*values) -> _OneOf:
    """A field value that may be any of `values` (`verdict=any_of("indicated", "iv_only")`)."""
    if not values:
        raise CriteriaError("any_of(): name at least one value")
    return _OneOf(values)


def other_than(value) -> _OtherThan:
    """A field value that must differ from `value` (`trigger=other_than("iron")`)."""
    return _OtherThan(value)


# ---- building blocks ------------------------------------------------------------------------------


def _all(pieces: list):
    """`a & b & c`, left to right: durable-rules compiles it to one flat `$and` list. A comparison with
    another fact never follows an `|` group (the engine ignores it there): `|` groups go last then."""
    if any(_has_reference(p) for p in pieces) and any(_is_or(p) for p in pieces):
        pieces = [p for p in pieces if not _is_or(p)] + [p for p in pieces if _is_or(p)]
    return reduce(lambda left, right: left & right, pieces)


def _any(terms: list):
    return reduce(lambda left, right: left | right, terms)


def _is_or(piece) -> bool:
    return getattr(piece, "_op", None) == "$or"


def _has_reference(piece) -> bool:
    return bool(_reference_fields(piece.define()))


# names that `m.<name>` resolves to the DSL's own members, not to a fact field (a silent clash)
_DSL_MEMBERS = frozenset({"alias", "define", "matches", "imatches", "anyItem", "allItems"})


def _equal(field: str, value):
    return _field(field) == value


def _field(name: str):
    if name in _DSL_MEMBERS or name.startswith("_"):
        raise CriteriaError(f"field {name!r} cannot be matched: m.{name} is a member of the durable-rules DSL")
    return getattr(m, name)


def _where(where: dict, where_: str):
    """Field filters of `finding(...)` / `params(...)`: a value, `any_of(...)` or `other_than(...)`."""
    pieces = []
    for field, wanted in where.items():
        if isinstance(wanted, _OneOf):
            pieces.append(_any([_equal(field, v) for v in wanted.values]))
        elif isinstance(wanted, _OtherThan):
            pieces.append(_field(field) != wanted.value)
        elif isinstance(wanted, (str, bool, int, float)):
            pieces.append(_equal(field, wanted))
        else:
            raise CriteriaError(f"{where_}: {field}= takes a value, any_of(...) or other_than(...), not {wanted!r}")
    return pieces


def _in_list(field: str, names: tuple[str, ...]):
    """The list field `field` holds one of `names`."""
    return getattr(m, field).anyItem(_any([item == name for name in names]))


def _bind(alias: str | None, expression, where: str):
    _check_alias(alias, where)
    return expression if alias is None else getattr(c, alias) << expression


def _kind(kind: str):
    return m.kind == kind


# ---- findings --------------------------------------------------------------------------------------


def finding(name: str, *more: str, alias: str | None = None, **where):
    """A derived finding `name` (or any of `more`), with optional field filters:
    `finding("dopaminergic_draft", alias="draft", selected=True)`."""
    names = (name, *more)
    for each in names:
        if each not in FINDINGS:
            raise CriteriaError(f"finding(): unknown finding {each!r}{_did_you_mean(each, FINDINGS)}")
        _check_values(each, where, f"finding({each!r})")
    return _bind(
        alias,
        _all([_kind("finding"), _any([_equal("name", n) for n in names]), *_where(where, f"finding({name!r})")]),
        f"finding({name!r})",
    )


# ---- conditions (the problem list, and an order's coded reason) --------------------------------------


def coded(
    *code_sets: str, alias: str | None = None, excluding: str | None = None, onset_within=None, recorded_since=None
):
    """A condition in any of `code_sets` (present: the facts layer keeps only active, not refuted ones).
    `excluding`: and in none of that set; `onset_within`: onset dated and at most that many days ago;
    `recorded_since`: recorded after that many days ago (fewer days ago)."""
    where = f"coded({', '.join(map(repr, code_sets))})"
    _check("code set", code_sets, where)
    pieces = [_kind("condition"), _in_list("sets", code_sets)]
    if excluding is not None:
        _check("code set", (excluding,), where)
        pieces.append(m.sets.allItems(item != excluding))
    if onset_within is not None:
        limit = _operand(onset_within, where)
        pieces += [m.onset_days_ago >= 0, m.onset_days_ago <= limit]
    if recorded_since is not None:
        pieces.append(m.recorded_days_ago < _operand(recorded_since, where))
    return _bind(alias, _all(pieces), where)


def not_coded(*code_sets: str):
    """No condition in any of `code_sets` (for `when_all`; in `all_of`, list `coded(...)` under exclusion)."""
    return none(coded(*code_sets))


def order_reason_other_than(code_set: str):
    """A coded reason of the order being placed that is not in `code_set` (it points to another indication)."""
    _check("code set", (code_set,), f"order_reason_other_than({code_set!r})")
    return _all(
        [_kind("condition"), m.verification_status == "reason for this order", m.sets.allItems(item != code_set)]
    )


# ---- lab results and pending tests -------------------------------------------------------------------


def result(*analytes: str, alias: str | None = None, within=None):
    """A final result of any of `analytes` within its lookback, readable or not (a panel counts);
    `within`: at most that many days ago."""
    where = f"result({', '.join(map(repr, analytes))})"
    _check("analyte", analytes, where)
    pieces = [_kind("lab"), _any([_equal("analyte", a) for a in analytes])]
    if within is not None:
        pieces.append(m.days_ago <= _operand(within, where))
    return _bind(alias, _all(pieces), where)


def readable_result(analyte: str, *, alias: str | None = None, within=None, below=None, above=None):
    """A usable (numeric, known unit) result of `analyte`. `below`: its value is under that number and is
    not a lower bound ('>60' is never low); `above`: over it and not an upper bound ('<5' is never high)."""
    where = f"readable_result({analyte!r})"
    _check("analyte", (analyte,), where)
    pieces = [_kind("lab"), _equal("analyte", analyte), m.usable == True]  # noqa: E712 (the DSL needs ==)
    if within is not None:
        pieces.append(m.days_ago <= _operand(within, where))
    if below is not None:
        pieces += [m.value < _operand(below, where), (m.comparator != ">") & (m.comparator != ">=")]
    if above is not None:
        pieces += [m.value > _operand(above, where), (m.comparator != "<") & (m.comparator != "<=")]
    return _bind(alias, _all(pieces), where)


def no_result(*analytes: str):
    """No result of any of `analytes` (for `when_all`; in `all_of`, list `result(...)` under exclusion)."""
    return none(result(*analytes))


def pending(*analytes: str, alias: str | None = None):
    """A test of any of `analytes` ordered or drawn and not yet resulted."""
    where = f"pending({', '.join(map(repr, analytes))})"
    _check("analyte", analytes, where)
    return _bind(alias, _all([_kind("pending_test"), _any([_equal("analyte", a) for a in analytes])]), where)


def nothing_pending(*analytes: str):
    """No pending test of any of `analytes` (for `when_all`; in `all_of`, list `pending(...)` under exclusion)."""
    return none(pending(*analytes))


# ---- data completeness ----------------------------------------------------------------------------


def data_gap(*keys: str):
    """Some of the data of any of `keys` could not be read (an absence there proves nothing)."""
    _check("data key", keys, f"data_gap({', '.join(map(repr, keys))})")
    return _all([_kind("data_gap"), _any([_equal("key", k) for k in keys])])


def data_complete(*keys: str):
    """Every page of `keys` was read (for `when_all`; in `all_of`, list `data_gap(...)` under exclusion)."""
    return none(data_gap(*keys))


# ---- medications -------------------------------------------------------------------------------------


def _medication(
    origin_piece,
    where: str,
    alias: str | None,
    selected: bool,
    group,
    drug_class,
    not_class,
    ingredient,
    start_dated: bool,
):
    pieces = [_kind("medication"), origin_piece]
    if selected:
        pieces.append(m.selected == True)  # noqa: E712 (the DSL needs ==)
    if start_dated:
        pieces.append(m.started_days_ago >= 0)
    for field, what, names in (
        ("groups", "drug group", group),
        ("classes", "drug class", drug_class),
        ("ingredients", "ingredient", ingredient),
    ):
        if names is not None:
            names = (names,) if isinstance(names, str) else tuple(names)
            pieces.append(_in_list(field, _check(what, names, where)))
    if not_class is not None:
        _check("drug class", (not_class,), where)
        pieces.append(m.classes.allItems(item != not_class))
    if len(pieces) == 2 + selected:
        raise CriteriaError(f"{where}: say which drugs (group=, drug_class= or ingredient=)")
    return _bind(alias, _all(pieces), where)


def selected_draft(*, alias: str | None = None, group=None, drug_class=None, ingredient=None):
    """A draft medication order the clinician is acting on: on order-select the selected ones, on
    order-sign every draft. `group`/`drug_class`/`ingredient`: a name or a tuple of alternatives."""
    return _medication(m.origin == "draft", "selected_draft()", alias, True, group, drug_class, None, ingredient, False)


def draft_medication(
    *, alias: str | None = None, group=None, drug_class=None, not_class: str | None = None, ingredient=None
):
    """Any draft medication order of the call, selected or not; `not_class`: of no class `not_class`."""
    return _medication(
        m.origin == "draft", "draft_medication()", alias, False, group, drug_class, not_class, ingredient, False
    )


def chart_medication(
    *, alias: str | None = None, group=None, drug_class=None, ingredient=None, start_dated: bool = False
):
    """An active systemic medication on the chart; `start_dated`: its start date is known."""
    return _medication(
        m.origin == "chart", "chart_medication()", alias, False, group, drug_class, None, ingredient, start_dated
    )


def chart_or_recent_medication(*, alias: str | None = None, group=None, drug_class=None, ingredient=None):
    """A medication on the chart now, or stopped or completed within the new-start window: anything but a draft."""
    return _medication(
        m.origin != "draft", "chart_or_recent_medication()", alias, False, group, drug_class, None, ingredient, False
    )


# ---- procedures ------------------------------------------------------------------------------------


def selected_draft_order(procedure: str, *, alias: str | None = None, only_known_reasons: bool = False):
    """A draft procedure order the clinician is acting on (selected on order-select, any on order-sign);
    `only_known_reasons`: every coded reason on it falls in a known code set."""
    where = f"selected_draft_order({procedure!r})"
    _check("procedure", (procedure,), where)
    pieces = [_kind("order"), m.origin == "draft", m.selected == True, _equal("procedure", procedure)]  # noqa: E712
    if only_known_reasons:
        pieces.append(m.unclassified_reasons == 0)
    return _bind(alias, _all(pieces), where)


def ordered(procedure: str, *, alias: str | None = None, within=None):
    """An order for `procedure` on the chart or in the call; `within`: authored at most that many days ago."""
    where = f"ordered({procedure!r})"
    _check("procedure", (procedure,), where)
    pieces = [_kind("order"), _equal("procedure", procedure)]
    if within is not None:
        limit = _operand(within, where)
        pieces += [m.days_ago >= 0, m.days_ago <= limit]
    return _bind(alias, _all(pieces), where)


def procedure_done(procedure: str, *, alias: str | None = None, within=None):
    """A completed procedure or final report of `procedure`; `within`: at most that many days ago."""
    where = f"procedure_done({procedure!r})"
    _check("procedure", (procedure,), where)
    pieces = [_kind("procedure_done"), _equal("procedure", procedure)]
    if within is not None:
        pieces.append(m.days_ago <= _operand(within, where))
    return _bind(alias, _all(pieces), where)


# ---- the call: hook, patient, settings -----------------------------------------------------------------


def hook_is(hook: str, *, alias: str = "ctx"):
    """The call is for `hook`."""
    _check("hook", (hook,), f"hook_is({hook!r})")
    return _bind(alias, _all([_kind("context"), _equal("hook", hook)]), f"hook_is({hook!r})")


def order_hook(*, alias: str = "ctx"):
    """The call is for either order hook (order-select: the selected drafts; order-sign: every draft)."""
    return _bind(alias, _all([_kind("context"), _any([_equal("hook", h) for h in ORDER_HOOKS])]), "order_hook()")


def patient(*, alias: str = "patient", **where):
    """The patient fact (age group, whether the age is known): `patient(child=True)`."""
    _check_values("patient", where, "patient()")
    pieces = [_kind("patient"), *_where(where, "patient()")]
    return _bind(alias, _all(pieces) if len(pieces) > 1 else pieces[0], "patient()")


def params(*, alias: str = "params", **where):
    """The settings of this call (the `params` fact), bound so `setting(...)` can compare with them;
    `params(r8_weak_red_flags=True)` also requires a yes/no setting to be on (or off)."""
    if where:
        _check("setting", where, "params()")
        _check_values("params", where, "params()")
    if alias != "params":
        raise CriteriaError("params(): setting(...) reads the alias 'params'; keep that alias")
    pieces = [_kind("params"), *_where(where, "params()")]
    return _bind(alias, _all(pieces) if len(pieces) > 1 else pieces[0], "params()")


# ---- a rule's criteria -----------------------------------------------------------------------------


def all_of(*, inclusion: list | tuple, exclusion: list | tuple = ()):
    """The rule's `when`: every inclusion criterion holds (each bound to its alias, which the render or
    derive function reads) and no exclusion criterion does (each becomes a `none()`, after all
    inclusions, so an exclusion may compare with any inclusion's alias)."""
    inclusion, exclusion = list(inclusion), list(exclusion)
    if not inclusion:
        raise CriteriaError("all_of(): at least one inclusion criterion")
    bound: dict[str, str | None] = {}
    for criterion in inclusion:
        if isinstance(criterion, none):
            raise CriteriaError(
                "all_of(): a negated criterion (not_coded, no_result, nothing_pending, data_complete) "
                "belongs under exclusion=, written positively (coded, result, pending, data_gap)"
            )
        alias = getattr(criterion, "alias", None)
        if not alias:
            raise CriteriaError("all_of(): every inclusion criterion needs an alias= (the name its fact is read by)")
        if alias in bound:
            raise CriteriaError(f"all_of(): alias {alias!r} is bound twice")
        _check_references(criterion, bound)
        bound[alias] = _kind_of(criterion)
    for criterion in exclusion:
        if isinstance(criterion, none):
            raise CriteriaError(
                "all_of(): exclusion criteria are written positively (coded, result, pending, "
                "data_gap); all_of negates them"
            )
        if getattr(criterion, "alias", None):
            raise CriteriaError(
                f"all_of(): exclusion criterion with alias {criterion.alias!r}: an absent fact binds "
                "nothing, drop the alias"
            )
        _check_references(criterion, bound)
    return when_all(*inclusion, *(none(criterion) for criterion in exclusion))


def _kind_of(criterion) -> str | None:
    definition = criterion.define()
    terms = definition.get("$and", [definition])
    return next((t["kind"] for t in terms if isinstance(t, dict) and isinstance(t.get("kind"), str)), None)


def _check_references(criterion, bound: dict[str, str | None]) -> None:
    """Every alias a criterion compares with is bound by an earlier inclusion, with that field."""
    for alias, field in _reference_fields(criterion.define()):
        if alias not in bound:
            hint = " (add params() to the inclusion criteria)" if alias == "params" else _did_you_mean(alias, bound)
            raise CriteriaError(
                f"all_of(): a criterion compares with {alias!r}, which no earlier inclusion binds{hint}"
            )
        kind = bound[alias]
        if kind is not None and (kind in KINDS):
            _check_fields(kind, (field,), f"value_of({alias!r}, {field!r})")


def _reference_fields(expression) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    if isinstance(expression, dict):
        for key, value in expression.items():
            if key in ("$iany", "$iall"):
                continue
            if key in ("$and", "$or"):
                for term in value:
                    found |= _reference_fields(term)
            elif key.startswith("$") and isinstance(value, dict):
                for operand in value.values():
                    found |= _operand_fields(operand)
    return found


def _operand_fields(operand: Any) -> set[tuple[str, str]]:
    if not isinstance(operand, dict):
        return set()
    found: set[tuple[str, str]] = set()
    for key, value in operand.items():
        if key.startswith("$") and isinstance(value, dict) and "$l" in value:  # arithmetic: {"$add": {"$l", "$r"}}
            found |= _operand_fields(value["$l"]) | _operand_fields(value.get("$r"))
        elif isinstance(value, str):
            found.add((key, value))
    return found
