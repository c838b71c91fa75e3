"""Registration-time lint of rule definitions: conventions the durable-rules engine does not enforce itself."""
from __future__ import annotations

from durable.lang import m

from cds_service.authoring.rulebook import CARD, DERIVE, RuleSpec
from cds_service.engine.hygiene import RESERVED_FIELDS

RESERVED_ALIASES = {"s", "m", "host", "post", "assert_fact", "retract_fact", "start_timer", "cancel_timer",
                    "renew_action_lease", "delete_state", "get_facts", "get_pending_events"}


class RuleDefinitionError(Exception):
    """A rule module breaks an authoring convention; start-up stops."""


# ---- registration-time lint ---------------------------------------------------------------


def negated_kinds(definition: dict) -> set[str]:
    """Fact kinds that appear inside a none(): they must be asserted first, or a none() can stay true after its fact arrives."""
    kinds: set[str] = set()
    for rule in definition.values():
        for condition in rule.get("all", []) + rule.get("any", []):
            for name, expression in condition.items():
                if name.endswith("$not"):
                    kinds.update(_kinds_in(expression))
    return kinds


def _kinds_in(expression) -> set[str]:
    return _literals_of(expression, "kind")


def _literals_of(expression, field_name: str) -> set[str]:
    """String literals a compiled condition compares `field_name` with (e.g. kinds, finding names)."""
    found: set[str] = set()
    if isinstance(expression, dict):
        for key, value in expression.items():
            if key == field_name and isinstance(value, str):
                found.add(value)
            else:
                found |= _literals_of(value, field_name)
    elif isinstance(expression, list):
        for item in expression:
            found |= _literals_of(item, field_name)
    return found


def findings_read(spec: RuleSpec) -> set[str]:
    """Finding names a rule's conditions mention (`m.name == "..."`)."""
    compiled = spec.condition.define()
    return _literals_of(compiled.get("all", compiled.get("any")), "name")


def prune_unused_derivations(specs: list[RuleSpec]) -> list[RuleSpec]:
    """Drop derivations whose finding no remaining rule reads: a card rule switched off by
    configuration (R9, R10, R23, R24) takes its private findings with it."""
    while True:
        read = set().union(*(findings_read(s) for s in specs)) if specs else set()
        kept = [s for s in specs if s.stratum != DERIVE or s.produces in read]
        if len(kept) == len(specs):
            return kept
        specs = kept


def lint(specs: list[RuleSpec], definition: dict) -> None:
    problems = []
    derived = {"finding"}
    produced = {s.produces for s in specs if s.stratum == DERIVE}
    consumed_findings: set[str] = set()
    for spec in specs:
        rule = definition[spec.id]
        conditions = rule.get("all", rule.get("any"))
        if not conditions:
            problems.append(f"{spec.id}: empty condition list (a DSL name clash such as m.alias?)")
            continue
        if spec.stratum not in (DERIVE, CARD):
            problems.append(f"{spec.id}: unknown stratum {spec.stratum}")
        for condition in conditions:
            for alias, expression in condition.items():
                base = alias.split("$")[0]
                if base in RESERVED_ALIASES and not alias.startswith("m_"):
                    problems.append(f"{spec.id}: reserved alias {base!r}")
                if alias.endswith("$not") and _kinds_in(expression) & derived:
                    problems.append(f"{spec.id}: none() over a derived kind (it could be asserted after the none() was decided)")
                problems += [f"{spec.id}: {p}" for p in _literal_problems(expression)]
                if _reference_after_or(expression):
                    problems.append(f"{spec.id}: a comparison with another alias follows an | group inside &; "
                                    "durable-rules 2.0.28 ignores it there, so put it before the | group")
                consumed_findings |= _literals_of(expression, "name")
        if spec.stratum == CARD and spec.render is None:
            problems.append(f"{spec.id}: card rule without a render function")
        if not (spec.title and spec.citation):
            problems.append(f"{spec.id}: missing title or citation")
    for finding in sorted(produced - consumed_findings):
        problems.append(f"finding {finding!r} is derived but consumed by no rule")
    if problems:
        raise RuleDefinitionError("rule lint failed:\n  " + "\n  ".join(problems))


def _has_reference(term) -> bool:
    """True when a compiled term compares a field with another alias (`m.v < c.p.limit`):
    its operand is then a dict `{alias: field}` instead of a literal."""
    if not isinstance(term, dict):
        return False
    for key, value in term.items():
        if key in ("$and", "$or"):
            return any(_has_reference(t) for t in value)
        if key in ("$iany", "$iall"):
            continue
        operand = next(iter(value.values()), None) if key.startswith("$") and isinstance(value, dict) else value
        if isinstance(operand, dict):
            return True
    return False


def _reference_after_or(expression) -> bool:
    """Measured defect (not in the upstream tracker): in `a & (b | c) & (m.x < c.other.y)` the
    engine drops the last comparison; before the `|` group it is applied. Reject the bad shape."""
    if isinstance(expression, dict):
        for key, value in expression.items():
            if key == "$and" and isinstance(value, list):
                seen_or = False
                for term in value:
                    if seen_or and _has_reference(term):
                        return True
                    seen_or = seen_or or (isinstance(term, dict) and "$or" in term)
            if isinstance(value, (dict, list)) and _reference_after_or(value):
                return True
    elif isinstance(expression, list):
        return any(_reference_after_or(item) for item in expression)
    return False


def _literal_problems(expression) -> list[str]:
    problems = []
    if isinstance(expression, dict):
        for key, value in expression.items():
            if isinstance(key, str) and (key.startswith("_") or key in RESERVED_FIELDS):
                problems.append(f"reserved field name {key!r}")
            if isinstance(value, float) and "e" in repr(value) and "." not in repr(value):
                problems.append(f"float literal {value!r} would be rejected by the engine")
            if isinstance(value, (dict, list)):
                problems += _literal_problems(value)
    elif isinstance(expression, list):
        for item in expression:
            problems += _literal_problems(item)
    return problems
