"""A safe wrapper around durable-rules 2.0.28, whose stock host is unsafe for a web service.

The stock package starts a dispatcher thread that steals actions, keys sessions by 32-bit
hashes, crashes on deleting an untouched session and hides input errors in batch asserts.
This wrapper avoids all of that:

- a Host subclass whose `_run` starts no threads; rulesets registered once per process;
- one evaluation at a time per process (a lock), one fresh session per evaluation;
- a uuid4 session id; validated, compact facts with explicit collision-free ids;
- the C-level single-fact assert, negated kinds first; a sentinel fact and rule;
- exceptions in actions are collected and raised as RuleError naming the rule;
- card matches are collected in Python, findings asserted with fresh ids;
- the session is deleted in `finally`.
"""
from __future__ import annotations

import contextvars
import json
import logging
import math
import threading
import traceback
import uuid
from dataclasses import dataclass, field

import durable_rules_engine
from durable import engine as durable_engine
from durable.lang import m, when_all

from cds_service.authoring.rulebook import CARD, DERIVE, Match, RuleSpec

log = logging.getLogger(__name__)

SENTINEL_KIND = "$sentinel"
MAX_PROPERTIES = 50
MAX_FACTS = 4000
RESERVED_FIELDS = {"id", "sid", "alias", "define", "matches", "imatches", "anyItem", "allItems", "items"}
RESERVED_ALIASES = {"s", "m", "host", "post", "assert_fact", "retract_fact", "start_timer", "cancel_timer",
                    "renew_action_lease", "delete_state", "get_facts", "get_pending_events"}


class EngineError(Exception):
    """The engine rejected input or failed internally; no cards may be returned."""


class RuleError(EngineError):
    """A rule's action raised. Carries the rule id for logs; never shown to clients."""

    def __init__(self, rule_id: str, message: str):
        super().__init__(f"rule {rule_id} failed: {message}")
        self.rule_id = rule_id


class RuleDefinitionError(Exception):
    """A rule module breaks an authoring convention; start-up stops."""


def _fnv1a_32(text: str) -> int:
    value = 0x811C9DC5
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def _collision_free_ids(count: int) -> tuple[str, ...]:
    """f0, f1, ... skipping any id whose 32-bit FNV-1a hash repeats: the engine keys facts by that hash."""
    ids, seen, n = [], set(), 0
    while len(ids) < count:
        candidate = f"f{n}"
        digest = _fnv1a_32(candidate)
        if digest not in seen:
            seen.add(digest)
            ids.append(candidate)
        n += 1
    return tuple(ids)


FACT_IDS = _collision_free_ids(MAX_FACTS + 1)


@dataclass
class Evaluation:
    """Per-evaluation state, reachable from actions through a context variable."""

    facts_by_id: dict[str, dict] = field(default_factory=dict)
    card_matches: dict[str, list[Match]] = field(default_factory=dict)
    errors: list[tuple[str, BaseException, str]] = field(default_factory=list)
    next_id: int = 0
    firings: int = 0

    def take_id(self) -> str:
        if self.next_id >= len(FACT_IDS):
            raise EngineError(f"more than {MAX_FACTS} facts in one evaluation")
        fid = FACT_IDS[self.next_id]
        self.next_id += 1
        return fid


_current: contextvars.ContextVar[Evaluation] = contextvars.ContextVar("legmove_evaluation")


class _ThreadlessHost(durable_engine.Host):
    """R1: the stock Host starts a dispatcher and a timer thread; this one starts none."""

    def _run(self):
        return None


def _bound_facts(closure, aliases: list[str]) -> Match:
    message = closure._m or {}
    return {alias: dict(message[alias]) for alias in aliases if alias in message}


class RuleEngine:
    """One compiled ruleset and the lock that serialises evaluations in this process."""

    def __init__(self, specs: list[RuleSpec], name: str = "legmove"):
        self.specs = {s.id: s for s in specs}
        self.name = name
        definition = {}
        for spec in specs:
            definition[spec.id] = self._define(spec)
        definition["$sentinel"] = self._sentinel_definition()
        lint(specs, definition)
        self.negated_kinds = negated_kinds(definition)
        self._host = _ThreadlessHost()
        try:
            self._host.register_rulesets({name: definition})
        except Exception as exc:  # C errors are bare numbers: say which ruleset failed
            raise RuleDefinitionError(f"durable-rules rejected ruleset {name}: {exc}") from exc
        self._ruleset = self._host.get_ruleset(name)
        self._lock = threading.Lock()

    # ---- building ------------------------------------------------------------------------

    def _define(self, spec: RuleSpec) -> dict:
        rule = spec.condition
        rule.pri = spec.priority
        aliases = [getattr(expr, "alias", None) or "" for expr in rule.expression]
        aliases = [a for a in aliases if a]
        rule.func = [self._make_action(spec, aliases)]
        try:
            return rule.define()
        except Exception as exc:
            raise RuleDefinitionError(f"rule {spec.id} ({spec.module}) does not compile: {exc}") from exc

    @staticmethod
    def _make_action(spec: RuleSpec, aliases: list[str]):
        def action(closure):  # exactly one parameter: durable-rules treats two as asynchronous
            evaluation = _current.get()
            evaluation.firings += 1
            try:
                match = _bound_facts(closure, aliases)
                if spec.stratum == DERIVE:
                    fields = spec.derive(match)
                    if fields is None:  # the match failed a check the DSL cannot express (e.g. a date window)
                        return
                    clash = set(fields) & {"kind", "name", "rule", "basis", "id", "sid"}
                    if clash:
                        raise ValueError(f"a finding may not set {sorted(clash)}: the engine owns those fields")
                    finding = dict(fields, kind="finding", name=spec.produces, rule=spec.id,
                                   basis=[f["id"] for f in match.values()])
                    _assert_derived(closure, evaluation, finding)
                else:
                    evaluation.card_matches.setdefault(spec.id, []).append(match)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the caller
                evaluation.errors.append((spec.id, exc, traceback.format_exc()))

        return action

    @staticmethod
    def _sentinel_definition() -> dict:
        def sentinel(closure):
            return None

        rule = when_all(m.kind == SENTINEL_KIND)
        rule.func = [sentinel]
        return rule.define()

    # ---- evaluating ----------------------------------------------------------------------

    def evaluate(self, facts: list[dict]) -> Evaluation:
        """Run every rule over `facts`; returns the card matches, or raises EngineError/RuleError."""
        if len(facts) > MAX_FACTS:
            raise EngineError(f"{len(facts)} facts exceed the cap of {MAX_FACTS}")
        ordered = sorted(facts, key=lambda f: 0 if f.get("kind") in self.negated_kinds else 1)
        evaluation = Evaluation()
        with self._lock:
            sid = uuid.uuid4().hex
            # Serialise and validate everything before the session exists: a session whose
            # actions never ran crashes the process when deleted.
            texts = [self._prepare(evaluation, sid, fact) for fact in [{"kind": SENTINEL_KIND}, *ordered]]
            token = _current.set(evaluation)
            offset, actions_ran = None, False
            try:
                for text in texts:
                    fact_offset = self._assert_text(text)
                    offset = fact_offset if offset is None else offset
                errors: list = []
                actions_ran = True
                self._ruleset.do_actions(offset, lambda error, state: errors.append(error) if error else None)
                self._raise_errors(evaluation, errors, sid)
                return evaluation
            finally:
                self._cleanup(sid, offset, actions_ran)
                _current.reset(token)

    def _prepare(self, evaluation: Evaluation, sid: str, fact: dict) -> str:
        fid = evaluation.take_id()
        record = dict(fact, sid=sid, id=fid)
        text = fact_json(record)
        evaluation.facts_by_id[fid] = record
        return text

    def _assert_text(self, text: str) -> int:
        return _assert_json(self._ruleset._handle, text)[1]

    def _cleanup(self, sid: str, offset: int | None, actions_ran: bool) -> None:
        if offset is None:
            return  # not even the sentinel reached the engine: no session exists
        try:
            if not actions_ran:  # initialise the session's action context before deleting it
                self._ruleset.do_actions(offset, lambda error, state: None)
            self._ruleset.delete_state(sid)
        except Exception:  # pragma: no cover - logged; the sentinel makes this path safe
            log.exception("could not delete engine session")

    def _raise_errors(self, evaluation: Evaluation, errors: list, sid: str) -> None:
        if evaluation.errors:
            rule_id, exc, trace = evaluation.errors[0]
            # exception messages can quote patient values: the type and frames at ERROR, the rest at DEBUG
            log.error("rule %s raised %s", rule_id, type(exc).__name__,
                      extra={"rule": rule_id, "frames": "".join(traceback.format_tb(exc.__traceback__))})
            log.debug("rule %s failure detail: %s", rule_id, trace)
            raise RuleError(rule_id, type(exc).__name__) from exc
        if errors:
            raise EngineError(f"engine error while running actions: {errors[0]}")
        state = self._ruleset.get_state(sid)
        if "exception" in state:  # the engine caught something itself (e.g. in c.assert_fact)
            raise EngineError(f"engine reported an action failure: {str(state['exception'])[:200]}")


def _assert_json(handle, text: str) -> tuple[int, int]:
    """The C-level single-fact assert (R5), for base and derived facts alike: the stock
    `c.assert_fact` re-serialises with json.dumps and would undo the float rewriting."""
    try:
        code, offset = durable_rules_engine.assert_fact(handle, text)
    except durable_rules_engine.error as exc:
        raise EngineError(f"engine rejected a fact: error {exc}") from exc
    if code not in (0, 1):
        raise EngineError(f"engine returned code {code} for a fact")
    return code, offset


def _assert_derived(closure, evaluation: Evaluation, finding: dict) -> None:
    """R8: assert a finding with a fresh id.

    "Not handled" (code 1) is normal here: it means no rule's condition matched the finding's
    values (iron stores in range match no card rule). A finding name that no rule reads at all
    is an authoring error, and the start-up lint (`lint`) already refuses it, so nothing at run
    time deserves a warning."""
    fid = evaluation.take_id()
    record = dict(finding, id=fid, sid=closure.s.sid)
    code, _ = _assert_json(closure._ruleset._handle, fact_json(record))
    if code == 1:
        log.debug("finding %s from rule %s matched no rule's condition", finding.get("name"), finding.get("rule"))
        return
    evaluation.facts_by_id[fid] = record


# ---- fact hygiene (R4) ------------------------------------------------------------------


def validate_fact(fact: dict) -> None:
    """Crash prevention, not tidiness: the C core segfaults on some inputs (nested objects, huge lists)."""
    count = 0
    for key, value in fact.items():
        if not isinstance(key, str) or key.startswith(("$", "_")) or (key in RESERVED_FIELDS and key not in ("id", "sid")):
            raise EngineError(f"reserved or invalid field name {key!r}")
        count += 1
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise EngineError(f"non-finite number in field {key!r}")
            if not isinstance(item, (str, int, float, bool)) and item is not None:
                raise EngineError(f"field {key!r} holds {type(item).__name__}, not a JSON scalar")
        if isinstance(value, list) and len(value) > 40:
            raise EngineError(f"field {key!r} holds more than 40 items")
    if count > MAX_PROPERTIES:
        raise EngineError(f"fact has {count} properties; the limit is {MAX_PROPERTIES}")


def _format_number(value: float) -> str:
    text = repr(value)
    if "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"  # the engine's parser needs a fraction before an exponent
    return text


def fact_json(fact: dict) -> str:
    """JSON text for the engine, with every float written in a form its parser accepts.

    One `json.dumps` of the whole fact when no float needs rewriting (the usual case: it writes
    floats with `repr`, as `_format_number` does); field by field only for a float in exponent
    form without a fraction, which the engine's parser rejects."""
    validate_fact(fact)
    if not any(_needs_rewrite(value) for value in fact.values()):
        return json.dumps(fact, ensure_ascii=False, separators=(",", ":"))
    parts = []
    for key, value in fact.items():
        parts.append(f"{json.dumps(key, ensure_ascii=False)}:{_value_json(value)}")
    return "{" + ",".join(parts) + "}"


def _needs_rewrite(value) -> bool:
    if isinstance(value, float):
        return _format_number(value) != repr(value)
    return isinstance(value, list) and any(isinstance(v, float) and _format_number(v) != repr(v) for v in value)


def _value_json(value) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return _format_number(value)
    return "[" + ",".join(_value_json(v) for v in value) + "]"


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


_ENGINES: dict[tuple, RuleEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(specs: list[RuleSpec]) -> RuleEngine:
    """One engine per distinct rule selection per process: rulesets are never created per request."""
    key = tuple(sorted(s.id for s in specs))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = RuleEngine(specs, name=f"legmove_{len(_ENGINES)}")
        return _ENGINES[key]

