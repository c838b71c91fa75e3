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
import logging
import threading
import traceback
import uuid
from dataclasses import dataclass, field

import durable_rules_engine
from durable import engine as durable_engine
from durable.lang import m, when_all

from cds_service.authoring.rulebook import DERIVE, Match, RuleSpec
from cds_service.engine.hygiene import EngineError, fact_json
from cds_service.engine.lint import RuleDefinitionError, lint, lint_fact_model, negated_kinds
from cds_service.facts.schema import finding_fact

log = logging.getLogger(__name__)

SENTINEL_KIND = "$sentinel"
MAX_FACTS = 4000


class RuleError(EngineError):
    """A rule's action raised. Carries the rule id for logs; never shown to clients."""

    def __init__(self, rule_id: str, message: str):
        super().__init__(f"rule {rule_id} failed: {message}")
        self.rule_id = rule_id


def _fnv1a_32(text: str) -> int:
    value = 0x811C9DC5
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def _collision_free_ids(count: int) -> tuple[str, ...]:
    """f0, f1, ... skipping any id whose 32-bit FNV-1a hash repeats: the engine keys facts by that hash."""
    ids: list[str] = []
    seen: set[int] = set()
    n = 0
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


REGISTRATION_ATTEMPTS = 3


def _register(name: str, definition: dict) -> _ThreadlessHost:
    """Register the ruleset on a new host, trying again when the C engine refuses it.

    durable-rules' C parser now and then rejects a definition it accepts on the next try: the same
    bytes (the definition is deterministic) failed with "error code: 102" (unexpected type) once in
    a few hundred start-ups, which in a gunicorn worker means "worker failed to boot" and the whole
    service stops. A definition that is really wrong fails every time, so it still stops start-up,
    after the last attempt, with the engine's error."""
    for attempt in range(1, REGISTRATION_ATTEMPTS + 1):
        host = _ThreadlessHost()
        try:
            # a copy each time: registering deletes each rule's 'run' action from the definition
            host.register_rulesets({name: {rule_id: dict(rule) for rule_id, rule in definition.items()}})
            return host
        except Exception as exc:  # C errors are bare numbers: say which ruleset failed
            if attempt == REGISTRATION_ATTEMPTS:
                raise RuleDefinitionError(f"durable-rules rejected ruleset {name}: {exc}") from exc
            log.warning(
                "durable-rules rejected ruleset %s (%s); registering it again (attempt %d of %d)",
                name,
                exc,
                attempt + 1,
                REGISTRATION_ATTEMPTS,
            )
    raise AssertionError("unreachable")


def _bound_facts(closure, aliases: list[str]) -> Match:
    message = closure._m or {}
    return {alias: dict(message[alias]) for alias in aliases if alias in message}


class RuleEngine:
    """One compiled ruleset and the lock that serialises evaluations in this process."""

    def __init__(self, specs: list[RuleSpec], name: str = "legmove", fact_model: bool = True):
        """`fact_model`: check every rule against the fact model (facts/schema.py) at start-up and
        every finding when it is derived; off only for probes of the engine itself over toy facts."""
        self.specs = {s.id: s for s in specs}
        self.name = name
        self.fact_model = fact_model
        definition = {}
        for spec in specs:
            definition[spec.id] = self._define(spec)
        definition["$sentinel"] = self._sentinel_definition()
        lint(specs, definition)
        if fact_model:
            lint_fact_model(specs, definition)
        self.negated_kinds = negated_kinds(definition)
        self._host = _register(name, definition)
        self._ruleset = self._host.get_ruleset(name)
        self._lock = threading.Lock()

    # ---- building ------------------------------------------------------------------------

    def _define(self, spec: RuleSpec) -> dict:
        rule = spec.condition
        rule.pri = spec.priority
        aliases = [getattr(expr, "alias", None) or "" for expr in rule.expression]
        aliases = [a for a in aliases if a]
        rule.func = [self._make_action(spec, aliases, self.fact_model)]
        try:
            return rule.define()
        except Exception as exc:
            raise RuleDefinitionError(f"rule {spec.id} ({spec.module}) does not compile: {exc}") from exc

    @staticmethod
    def _make_action(spec: RuleSpec, aliases: list[str], fact_model: bool):
        def action(closure):  # exactly one parameter: durable-rules treats two as asynchronous
            evaluation = _current.get()
            evaluation.firings += 1
            try:
                match = _bound_facts(closure, aliases)
                if spec.stratum == DERIVE:
                    assert spec.derive is not None and spec.produces is not None  # derivation() sets both
                    fields = spec.derive(match)
                    if fields is None:  # the match failed a check the DSL cannot express (e.g. a date window)
                        return
                    # checked against the fact model: a finding that does not fit fails the rule
                    finding = finding_fact(
                        spec.produces, fields, rule=spec.id, basis=[f["id"] for f in match.values()], checked=fact_model
                    )
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
            log.error(
                "rule %s raised %s",
                rule_id,
                type(exc).__name__,
                extra={"rule": rule_id, "frames": "".join(traceback.format_tb(exc.__traceback__))},
            )
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


_ENGINES: dict[tuple, RuleEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(specs: list[RuleSpec]) -> RuleEngine:
    """One engine per distinct rule selection per process: rulesets are never created per request."""
    key = tuple(sorted(s.id for s in specs))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = RuleEngine(specs, name=f"legmove_{len(_ENGINES)}")
        return _ENGINES[key]
