"""Rule versions and the lock file that keeps them honest.

Every rule carries a version (`version=` in `@card_rule` / `@derivation`, default 1). Cards, the
call log and feedback record it, so a committee reading the governance report compares like with
like: an override rate of "R3 version 2" is not mixed with version 1's.

A version is only worth something if it changes whenever the rule does. The lock file
`rules/versions.json` holds, per rule, its version and a fingerprint of everything that decides
what it says:

- its criteria as compiled (the durable-rules definition of its `when=` condition),
- the source of its function and of every helper function and module constant it uses from the
  rule modules (recursively), and of the order builders in `cds_service.authoring.orders`,
- its metadata (title, citation, logic, hooks, data keys, supersedes, on/off by default),
- the default values of the knowledge settings it reads: named in its criteria (`c.params.x`), read in
  its code as attributes of the typed settings (`ctx.settings.x`, `ctx.settings.profiles.aasm2024.x`,
  `ctx.settings.iron.x` for the active profile) or as fields of the params fact (`params["aasm2024_x"]`).

`check()` compares the registry with the lock file; the test suite fails when a fingerprint
changed but the version did not, and says what to do. After bumping, regenerate with one
command: `legmove-cds rules --lock` (or `python -m cds_service.store.rule_versions --write`).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import sys
import types
from pathlib import Path

from cds_service.authoring.rulebook import REGISTRY, RuleSpec
from cds_service.knowledge.settings import defaults as default_settings

LOCK_FILE = Path(__file__).resolve().parents[2] / "rules" / "versions.json"
REGENERATE = "legmove-cds rules --lock (or: python -m cds_service.store.rule_versions --write)"
_SOURCE_MODULES = ("rules", "cds_service.authoring.orders")


def _settings_by_name() -> dict[str, object]:
    """Every name a rule can read a setting by, with its default: top-level keys (`ctx.settings.x`,
    fields of the params fact) and the per-profile numbers the params fact flattens to `<profile>_<key>`."""
    settings = default_settings()
    names = {key: value for key, value in settings.items() if key != "profiles"}  # read one number at a time
    for profile, numbers in settings["profiles"].items():
        names.update({f"{profile}_{key}": value for key, value in numbers.items()})
    return names


_PROFILE_ATTRIBUTE = re.compile(r"\bprofiles\.(\w+)\.(\w+)")  # ctx.settings.profiles.aasm2024.iv_only_up_to
_ACTIVE_PROFILE_ATTRIBUTE = re.compile(r"\bsettings\.iron\.(\w+)")  # ctx.settings.iron.title: the active profile


def settings_read(text: str) -> dict[str, object]:
    """The settings (flattened names, with their defaults) that criteria or source text read."""
    names = _settings_by_name()
    found = {name for name in names if re.search(rf"\b{re.escape(name)}\b", text)}
    found |= {f"{profile}_{key}" for profile, key in _PROFILE_ATTRIBUTE.findall(text)}
    active = _ACTIVE_PROFILE_ATTRIBUTE.findall(text)
    if active:  # which profile is read depends on iron_profile, so both profiles' numbers count
        found |= {"iron_profile"} | {f"{profile}_{key}" for key in active for profile in ("seed", "aasm2024")}
    return {name: names[name] for name in sorted(found) if name in names}


def _criteria(spec: RuleSpec) -> dict:
    compiled = spec.condition.define()
    return {key: value for key, value in compiled.items() if key not in ("run", "pri")}


def _ours(module: str | None) -> bool:
    return module is not None and any(module == m or module.startswith(m + ".") for m in _SOURCE_MODULES)


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _sources(fn) -> dict[str, str]:
    """`module.name` -> source (functions) or repr (constants), for fn and all it reaches."""
    out: dict[str, str] = {}
    stack = [fn]
    while stack:
        current = stack.pop()
        current = inspect.unwrap(current)
        key = f"{current.__module__}.{current.__qualname__}"
        if key in out:
            continue
        out[key] = inspect.getsource(current)
        for name in sorted(_code_names(current.__code__)):
            value = current.__globals__.get(name)
            if isinstance(value, types.FunctionType) and _ours(value.__module__):
                stack.append(value)
            elif isinstance(value, (str, int, float, tuple, list, dict, frozenset, set)) and not name.startswith("__"):
                out.setdefault(
                    f"{current.__module__}.{name}",
                    repr(sorted(value) if isinstance(value, (set, frozenset)) else value),
                )
    return out


def fingerprint_parts(spec: RuleSpec) -> dict:
    """What the fingerprint is made of, readable (tests and `--explain`)."""
    criteria = json.dumps(_criteria(spec), sort_keys=True, default=str)
    sources = _sources(spec.render or spec.derive)
    text = criteria + "\n".join(sources.values())
    settings = settings_read(text)
    meta = {
        "title": spec.title,
        "citation": spec.citation,
        "logic": spec.logic,
        "stratum": spec.stratum,
        "hooks": list(spec.hooks),
        "needs": list(spec.needs),
        "supersedes": list(spec.supersedes),
        "enabled_by_default": spec.enabled_by_default,
        "produces": spec.produces,
        "source_url": spec.source_url,
    }
    return {"criteria": criteria, "sources": sources, "settings": settings, "meta": meta}


def fingerprint(spec: RuleSpec) -> str:
    parts = json.dumps(fingerprint_parts(spec), sort_keys=True, default=str)
    return hashlib.sha256(parts.encode("utf-8")).hexdigest()[:24]


def bundled() -> dict[str, RuleSpec]:
    """The rules shipped in `rules/` (a site's EXTRA_RULE_MODULES keep their own versions)."""
    return {rule_id: spec for rule_id, spec in REGISTRY.items() if spec.module.startswith("rules.")}


def current_lock(registry: dict[str, RuleSpec] | None = None) -> dict:
    registry = bundled() if registry is None else registry
    return {
        "_about": f"Rule versions and fingerprints. A rule whose fingerprint changes needs a version bump "
        f"(version= in its decorator); then regenerate this file: {REGENERATE}.",
        "rules": {
            spec.id: {"version": spec.version, "fingerprint": fingerprint(spec)}
            for spec in sorted(registry.values(), key=lambda s: s.id)
        },
    }


def read_lock(path: Path = LOCK_FILE) -> dict:
    if not path.exists():
        return {"rules": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def check(registry: dict[str, RuleSpec] | None = None, lock: dict | None = None) -> list[str]:
    """Problems between the code and the lock file, each a sentence that says what to do."""
    registry = bundled() if registry is None else registry
    locked = (read_lock() if lock is None else lock)["rules"]
    problems = []
    for rule_id, spec in sorted(registry.items()):
        entry = locked.get(rule_id)
        now = fingerprint(spec)
        if entry is None:
            problems.append(f"{rule_id} is not in the lock file: regenerate it with {REGENERATE}")
        elif now != entry["fingerprint"] and spec.version == entry["version"]:
            problems.append(
                f"{rule_id} changed (criteria, code, texts or settings it reads) but its version is "
                f"still {spec.version}: set version={spec.version + 1} in its decorator "
                f"({spec.module}), then regenerate the lock file with {REGENERATE}"
            )
        elif spec.version < entry["version"]:
            problems.append(
                f"{rule_id} is at version {spec.version}, below the locked {entry['version']}: versions only go up"
            )
        elif spec.version != entry["version"] or now != entry["fingerprint"]:
            problems.append(
                f"{rule_id} was bumped to version {spec.version} but the lock file still has version "
                f"{entry['version']}: regenerate it with {REGENERATE}"
            )
    for rule_id in sorted(set(locked) - set(registry)):
        problems.append(f"{rule_id} is in the lock file but no longer defined: regenerate it with {REGENERATE}")
    return problems


def write_lock(path: Path = LOCK_FILE) -> None:
    path.write_text(json.dumps(current_lock(), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cds_service.store.rule_versions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--write", action="store_true", help=f"regenerate {LOCK_FILE.name} from the code")
    parser.add_argument(
        "--accept-unbumped",
        action="store_true",
        help="with --write: also lock rules that changed without a bump (a pure refactor that "
        "changes nothing a clinician sees)",
    )
    args = parser.parse_args(argv)
    return run(write=args.write, accept_unbumped=args.accept_unbumped)


def run(write: bool = False, accept_unbumped: bool = False) -> int:
    """Check, or regenerate the lock file. Regenerating refuses while a changed rule keeps its
    version, so the lock cannot be used to skip a bump by accident."""
    import rules

    rules.load_all()
    if write:
        problems = [
            p
            for p in check()
            if "versions only go up" in p or ("but its version is still" in p and not accept_unbumped)
        ]
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        write_lock()
        print(f"wrote {LOCK_FILE} ({len(bundled())} rules)")
        return 0
    problems = check()
    print("\n".join(problems) or "rule versions match the lock file")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
