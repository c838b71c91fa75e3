"""Registration-time lint of rule definitions: conventions the durable-rules engine does not enforce itself."""

from __future__ import annotations

from types import MappingProxyType

from cds_service.authoring.rulebook import CARD, DERIVE, RESERVED_ALIASES, RuleSpec
from cds_service.engine.hygiene import RESERVED_FIELDS
from cds_service.facts.schema import FINDINGS, KINDS, FactKind, FactSchemaError, did_you_mean


class RuleDefinitionError(Exception):
    """A rule module breaks an authoring convention; start-up stops."""


# ---- registration-time lint ---------------------------------------------------------------


def negated_kinds(definition: dict) -> set[str]:
    """Fact kinds that appear inside a none(): they must be asserted first, or a none() can stay true
    after its fact arrives."""
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
                    problems.append(
                        f"{spec.id}: none() over a derived kind (it could be asserted after the none() was decided)"
                    )
                problems += [f"{spec.id}: {p}" for p in _literal_problems(expression)]
                if _reference_after_or(expression):
                    problems.append(
                        f"{spec.id}: a comparison with another alias follows an | group inside &; "
                        "durable-rules 2.0.28 ignores it there, so put it before the | group"
                    )
                consumed_findings |= _literals_of(expression, "name")
        if spec.stratum == CARD and spec.render is None:
            problems.append(f"{spec.id}: card rule without a render function")
        if not (spec.title and spec.citation):
            problems.append(f"{spec.id}: missing title or citation")
    for finding in sorted(f for f in produced - consumed_findings if f):
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


# ---- the fact model (facts/schema.py) -------------------------------------------------------

_COMPARISONS = ("$lt", "$lte", "$gt", "$gte", "$neq", "$mt", "$imt")


def lint_fact_model(specs: list[RuleSpec], definition: dict) -> None:
    """Stop start-up when a rule names a kind, a field or a finding the fact model does not have."""
    problems = fact_model_problems(specs, definition)
    if problems:
        raise RuleDefinitionError("rule lint failed (fact model, see docs/fact-model.md):\n  " + "\n  ".join(problems))


def fact_model_problems(specs: list[RuleSpec], definition: dict) -> list[str]:
    """Every place a compiled rule names a kind, field, finding or closed-set value the model does
    not have: in positive conditions and inside none(), in `&`/`|` trees, anyItem/allItems, and in
    comparisons with another alias (`m.days_ago < c.prior.days_ago` checks `prior`'s kind too)."""
    problems = []
    produced = {s.produces for s in specs if s.stratum == DERIVE and s.produces}
    for spec in specs:
        if spec.stratum == DERIVE and spec.produces is not None and spec.produces not in FINDINGS:
            problems.append(
                f"{spec.id}: it derives finding {spec.produces!r}, which the fact model does not declare "
                f"(declare_finding in the rule's module){did_you_mean(spec.produces, FINDINGS)}"
            )
    known_findings = set(FINDINGS) | produced
    for spec in specs:
        rule = definition.get(spec.id, {})
        problems += _RuleCheck(spec.id, known_findings).run(rule.get("all", rule.get("any")) or [])
    return problems


def _pins(expression, field_name: str) -> set[str] | None:
    """The string values `expression` requires `field_name` to equal (an `|` of them is their union),
    or None when it does not pin the field."""
    if not isinstance(expression, dict) or len(expression) != 1:
        return None
    ((key, value),) = expression.items()
    if key == field_name:
        return {value} if isinstance(value, str) else None
    if key == "$and" and isinstance(value, list):
        found = [p for p in (_pins(term, field_name) for term in value) if p is not None]
        return set.intersection(*found) if found else None
    if key == "$or" and isinstance(value, list):
        branches = [_pins(term, field_name) for term in value]
        pinned = [b for b in branches if b is not None]
        return None if not branches or len(pinned) < len(branches) else set().union(*pinned)
    return None


class _RuleCheck:
    """Walks one rule's compiled conditions against the fact model, collecting problems."""

    def __init__(self, rule_id: str, known_findings: set[str]):
        self.rule_id = rule_id
        self.known_findings = known_findings
        self.aliases: dict[str, dict] = {}
        self.problems: list[str] = []

    def run(self, conditions: list) -> list[str]:
        self._collect_aliases(conditions)
        self._conditions(conditions)
        return list(dict.fromkeys(self.problems))

    def _collect_aliases(self, conditions: list) -> None:
        for condition in conditions:
            for name, expression in condition.items():
                if name.endswith(("$all", "$any")) and isinstance(expression, list):
                    self._collect_aliases(expression)
                elif "$" not in name:
                    self.aliases[name] = expression

    def _conditions(self, conditions: list) -> None:
        for condition in conditions:
            for name, expression in condition.items():
                if name.endswith(("$all", "$any")) and isinstance(expression, list):
                    self._conditions(expression)
                    continue
                if name.endswith("$not"):
                    where = "inside none(), "
                else:
                    where = "in an unnamed condition, " if _unnamed(name.split(".")[-1]) else f"in c.{name}, "
                targets = self._targets(expression, None, where)
                if targets is not None:
                    self._walk(expression, targets, where)

    # which kinds (and findings) a (sub)condition can match -----------------------------------

    def _targets(self, expression, parent: list | None, where: str, report: bool = True) -> list | None:
        """The FactKinds a (sub)expression can match: those it pins by `kind` (and `name` for
        findings), else its parent's. None when nothing is pinned at the top (reported)."""
        kinds = _pins(expression, "kind")
        if kinds is None:
            if parent is None and report:
                self._problem(f"{where}the condition does not say which kind of fact it matches (m.kind == ...)")
            return parent
        targets = []
        for kind in sorted(kinds):
            if kind not in KINDS:
                if report:
                    self._problem(f"{where}kind {kind!r} is not a kind of fact{did_you_mean(kind, KINDS)}")
                continue
            if kind != "finding":
                targets.append(KINDS[kind])
                continue
            names = _pins(expression, "name")
            if names is None:
                parent_findings = [t for t in parent or [] if t.name.startswith("finding:")]
                targets += parent_findings or [_any_finding()]
                continue
            for name in sorted(names):
                if name not in self.known_findings:
                    if report:
                        self._problem(
                            f"{where}finding {name!r} is derived by no rule and declared nowhere"
                            f"{did_you_mean(name, self.known_findings)}"
                        )
                elif name in FINDINGS:
                    targets.append(FINDINGS[name])
        return targets

    # fields and values ----------------------------------------------------------------------

    def _walk(self, expression, targets: list, where: str) -> None:
        if not isinstance(expression, dict):
            return
        for key, value in expression.items():
            if key in ("$and", "$or") and isinstance(value, list):
                node = self._targets({key: value}, targets, where, report=False) or targets
                for term in value:
                    branch = self._targets(term, node, where, report=False) if key == "$or" else node
                    self._walk(term, branch or node, where)
            elif key in ("$ex", "$nex") and isinstance(value, dict):
                for field_name in value:
                    self._field(field_name, targets, where)
            elif key in ("$iany", "$iall") and isinstance(value, dict):
                for field_name, inner in value.items():
                    specs = self._field(field_name, targets, where)
                    for target, spec in specs:
                        if list not in spec.types:
                            self._problem(
                                f"{where}field {field_name!r} of {target._what()} is not a list: "
                                f"anyItem/allItems never match it"
                            )
                        else:
                            self._items(inner, field_name, target, spec, where)
            elif key in _COMPARISONS and isinstance(value, dict):
                for field_name, operand in value.items():
                    specs = self._field(field_name, targets, where)
                    if isinstance(operand, dict):
                        self._operand(operand, where)
                    else:
                        for target, spec in specs:
                            self._literal(field_name, target, spec, operand, where, key)
            elif not key.startswith("$"):
                specs = self._field(key, targets, where)
                if isinstance(value, dict):
                    self._operand(value, where)
                else:
                    for target, spec in specs:
                        self._literal(key, target, spec, value, where, "$eq")

    def _field(self, field_name: str, targets: list, where: str) -> list:
        found = []
        for target in targets:
            try:
                found.append((target, target.field(field_name)))
            except FactSchemaError as exc:
                self._problem(f"{where}{exc}")
        return found

    def _items(self, inner, field_name: str, target, spec, where: str) -> None:
        """Terms over the items of a list field (`item == "RLS"`): list items are strings."""
        if not isinstance(inner, dict):
            return
        for key, value in inner.items():
            if key in ("$and", "$or") and isinstance(value, list):
                for term in value:
                    self._items(term, field_name, target, spec, where)
            elif key == "$i":
                self._literal(field_name, target, spec, value, where, "$eq", item=True)
            elif key in _COMPARISONS and isinstance(value, dict):
                for item_key, operand in value.items():
                    if item_key == "$i" and not isinstance(operand, dict):
                        self._literal(field_name, target, spec, operand, where, key, item=True)
                    elif item_key != "$i":
                        self._problem(
                            f"{where}items of {field_name!r} in {target._what()} are strings: "
                            f"{item_key.replace('$i', 'item')!r} never matches"
                        )
            elif key.startswith("$i."):
                self._problem(
                    f"{where}items of {field_name!r} in {target._what()} are strings: "
                    f"{key.replace('$i', 'item')!r} never matches"
                )

    def _literal(self, field_name: str, target, spec, literal, where: str, op: str, item: bool = False) -> None:
        what = f"an item of {field_name!r}" if item else f"field {field_name!r}"
        types = (str,) if item else spec.types
        if isinstance(literal, bool):
            fits = bool in types
        elif isinstance(literal, (int, float)):
            fits = bool(set(types) & {int, float})
        elif literal is None:
            fits = type(None) in types
        else:
            fits = isinstance(literal, tuple(t for t in types if t is not type(None)) or (type(None),))
        if op in ("$mt", "$imt"):
            fits = str in types and isinstance(literal, str)
        if not fits:
            self._problem(
                f"{where}{what} of {target._what()} is compared with {literal!r}, "
                f"which a {'/'.join(t.__name__ for t in types)} never equals"
            )
            return
        if field_name == "kind" and not item:
            return  # kinds are checked where they pin the condition
        if field_name == "name" and target.name.startswith("finding") and not item:
            if isinstance(literal, str) and literal not in self.known_findings:
                self._problem(
                    f"{where}finding {literal!r} is derived by no rule and declared nowhere"
                    f"{did_you_mean(literal, self.known_findings)}"
                )
            return
        if (
            spec.values is not None
            and isinstance(literal, str)
            and op in ("$eq", "$neq")
            and literal not in spec.values
        ):
            self._problem(
                f"{where}{what} of {target._what()} never holds {literal!r}{did_you_mean(literal, spec.values)}"
            )

    def _operand(self, operand: dict, where: str) -> None:
        """The other side of a comparison: another alias's field (`c.due.days_ago`), or arithmetic on it."""
        for key, value in operand.items():
            if key in ("$add", "$sub", "$mul", "$div") and isinstance(value, dict):
                for side in (value.get("$l"), value.get("$r")):
                    if isinstance(side, dict):
                        self._operand(side, where)
            elif not key.startswith("$") and isinstance(value, str):
                if key not in self.aliases:
                    self._problem(
                        f"{where}c.{key}.{value} refers to an alias no condition of this rule binds"
                        f"{did_you_mean(key, self.aliases)}"
                    )
                    continue
                targets = self._targets(self.aliases[key], None, where, report=False) or []
                for target in targets:
                    try:
                        target.field(value)
                    except FactSchemaError as exc:
                        self._problem(f"{where}c.{key}.{value}: {exc}")

    def _problem(self, text: str) -> None:
        self.problems.append(f"{self.rule_id}: {text}")


def _unnamed(name: str) -> bool:
    """Conditions without an alias compile as `m` or `m_<n>`."""
    return name == "m" or (name.startswith("m_") and name[2:].isdigit())


def _any_finding() -> FactKind:
    """A finding whose name the condition leaves open: any field some declared finding has."""
    return FactKind(
        "finding:any",
        "Any finding",
        MappingProxyType(
            {name: spec for kind in [KINDS["finding"], *FINDINGS.values()] for name, spec in kind.fields.items()}
        ),
    )
