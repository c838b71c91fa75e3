"""The clinical settings as one frozen, typed object.

`knowledge/settings.json` holds the defaults; a deployment changes any top-level key with
`LEGMOVE_KNOWLEDGE_OVERRIDES` (a JSON object, or the path of a file holding one). The two are merged
once per process and checked here, so a wrong type, a misspelt key or a profile that does not exist
stops start-up with a message naming the key, instead of a hook call failing (or a rule silently
reading a default) later. Rules read `ctx.settings.ferritin_lookback_days`: a whole number, never a
string to cast.

Each field carries its meaning and unit as metadata; `docs/knowledge.md` prints them as a table
(`settings_table()`, kept current by a test). Keys starting with `_` are comments, in the defaults
and in overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Union

SETTINGS_FILE = Path(__file__).parent / "settings.json"


class SettingsError(ValueError):
    """A knowledge setting (default or override) that cannot be used; the message names the key."""


def setting(text: str, unit: str = "", default: Any = dataclasses.MISSING, listed: bool = True):
    """A field with its meaning (one sentence) and unit, for the settings table (`listed=False`: a
    label, not a setting anyone tunes)."""
    metadata = {"meaning": text, "unit": unit, "listed": listed}
    if default is dataclasses.MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


# ---- nested values ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LocalCode:
    """A code of a system the deployment owns (the PLMS index has no LOINC code)."""

    system: str = setting("code system URI")
    code: str = setting("code in that system")


@dataclass(frozen=True, kw_only=True)
class OrderCode:
    """What a suggested order asks for: a coding (system and code, with its display) or only a text."""

    system: str | None = setting("code system URI", default=None)
    code: str | None = setting("code in that system", default=None)
    display: str | None = setting("display of the code", default=None)
    text: str | None = setting("order text when there is no verified code", default=None)
    status: str | None = setting("how far the code has been verified (for reviewers; not sent)", default=None)

    def check(self, where: str) -> None:
        if not ((self.system and self.code) or self.text or self.display):
            raise SettingsError(f"knowledge setting {where} needs a system and a code, or a text")

    @property
    def label(self) -> str | None:
        return self.display or self.text


@dataclass(frozen=True, kw_only=True)
class SeedProfile:
    """The iron threshold of the review articles."""

    title: str = setting("name of the profile in the card extension", listed=False)
    source: str = setting("where its numbers come from, in the card extension", listed=False)
    ferritin_iron_indicated_below: float = setting("iron is indicated when ferritin is below this", "ng/mL")
    tsat_iron_indicated_below: float | None = setting(
        "transferrin saturation threshold (the review articles set none)", "%", default=None
    )


@dataclass(frozen=True, kw_only=True)
class Aasm2024Profile:
    """The iron thresholds of the AASM 2024 guideline."""

    title: str = setting("name of the profile in the card extension", listed=False)
    source: str = setting("where its numbers come from, in the card extension", listed=False)
    ferritin_iron_indicated_at_or_below: float = setting("iron is indicated when ferritin is at or below this", "ng/mL")
    tsat_iron_indicated_below: float = setting("iron is indicated when transferrin saturation is below this", "%")
    iv_only_above: float | None = setting(
        "lower end of the band where only IV iron is suggested (unset: the ferritin threshold)", "ng/mL", default=None
    )
    iv_only_up_to: float = setting("upper end (inclusive) of the band where only IV iron is suggested", "ng/mL")
    child_ferritin_iron_indicated_below: float = setting(
        "iron is indicated for a child when ferritin is below this", "ng/mL"
    )
    child_threshold_status: str = setting("how far the child threshold has been verified", default="")


@dataclass(frozen=True, kw_only=True)
class IronProfiles:
    seed: SeedProfile = setting("the review articles' iron threshold")
    aasm2024: Aasm2024Profile = setting("the AASM 2024 guideline's iron thresholds")


# ---- the settings -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every key of knowledge/settings.json, typed. Built with `load()` (defaults + overrides)."""

    ferritin_lookback_days: int = setting(
        "how old a ferritin or transferrin saturation may be and still count (R1, R2)", "days"
    )
    iron_profile: str = setting(
        "which iron thresholds decide R2's card: `seed` (the review articles) or `aasm2024` "
        "(the AASM 2024 guideline); the other profile's verdict is stated on the card"
    )
    rls_worsening_additions: tuple[str, ...] = setting(
        "drug classes added to those the review articles name as "
        "worsening RLS (R3, R4); `[]` keeps the review articles' list"
    )
    profiles: IronProfiles = setting("the numbers of each iron profile (`profiles.seed.*`, `profiles.aasm2024.*`)")
    fasciculation_lab_lookback_days: int = setting(
        "how old a first-tier fasciculation lab (CK, TSH, B12, ...) may be (R8, R11)", "days"
    )
    screening_lookback_days: int = setting("how old a GAD-7 or PHQ-9 may be (R13)", "days")
    metabolic_lookback_days: int = setting(
        "how old an eGFR, metabolic panel or other myoclonus work-up lab may be (R14-R16)", "days"
    )
    metabolic_value_lookback_days: int = setting("how old a sodium or glucose value may be for myoclonus (R14)", "days")
    renal_lookback_days: int = setting("how old an eGFR may be for renal dosing (R23)", "days")
    plms_index_lookback_days: int = setting("how old a PLMS index may be (R7)", "days")
    prior_emg_window_days: int = setting("an EMG within this many days counts as a recent one (R12)", "days")
    akathisia_window_days: int = setting(
        "restlessness starting within this many days of a dopamine antagonist suggests akathisia (R17)", "days"
    )
    gbs_onset_window_days: int = setting(
        "weakness with areflexia recorded within this many days counts as acute (R9, off by default)", "days"
    )
    acute_deficit_window_days: int = setting(
        "a neurological deficit recorded within this many days counts as new (R10, off by default)", "days"
    )
    new_start_window_days: int = setting(
        "no dopaminergic drug ordered within this many days makes a draft a new "
        "start (R20); also how long a stopped order counts as recent",
        "days",
    )
    renal_dose_egfr_threshold: float = setting(
        "an eGFR below this with a renally cleared draft asks for a dose "
        "check (R23, off by default; unverified cut-off)",
        "mL/min/1.73m2",
    )
    plms_index_threshold_adult: float = setting(
        "PLMS index above which an adult meets the PLMD index criterion (R7)", "/h"
    )
    plms_index_threshold_child: float = setting("PLMS index above which a child meets it (R7)", "/h")
    plms_index_code: LocalCode = setting(
        "the local code of the PLMS index (replace the placeholder system with one the deployment owns)"
    )
    show_guideline_disagreement: bool = setting(
        "with the `seed` profile, an info card when only the AASM 2024 thresholds call for iron (R2)"
    )
    r8_weak_red_flags: bool = setting(
        "count nonspecific findings (abnormal reflexes R29.2, weakness R53.1) as fasciculation red flags (R8)"
    )
    r13_skip_if_diagnosed: bool = setting(
        "no anxiety/depression screening card when anxiety or depression is already coded (R13)"
    )
    cbc_accepts_hb_only: bool = setting(
        "reserved: a haemoglobin alone would count as a CBC on file; no rule reads it yet"
    )
    emg_order_code: OrderCode = setting("what R8's suggested EMG/NCS order asks for")
    neurology_referral_code: OrderCode = setting("what R8's suggested neurology referral asks for")
    head_imaging_order_code: OrderCode = setting("what R10's suggested emergent head imaging asks for")
    r7_documentation_check: bool = setting("R7 also checks that a coded PLMD has its index and a sleep complaint")
    pregnancy_max_days: int = setting(
        "a pregnancy counts for this many days from its onset (else its recorded "
        "date): pregnancies left active for years do not",
        "days",
    )
    suppress_overridden_days: float = setting(
        "a card a clinician dismissed stays away this long for the same evidence", "days"
    )
    suppress_accepted_days: float = setting("a card whose suggestion was accepted stays away this long", "days")
    suppress_days_by_rule: Mapping[str, Mapping[str, float]] = setting(
        'per-rule windows, e.g. `{"R3": {"overridden": 7, "accepted": 30}}`', "days"
    )
    order_sign_dedup_hours: float = setting(
        "an order-select card is not repeated on order-sign of the same draft within this long", "hours"
    )

    # ---- reading ---------------------------------------------------------------------------------

    @property
    def iron(self) -> SeedProfile | Aasm2024Profile:
        """The active iron profile."""
        return getattr(self.profiles, self.iron_profile)

    def days(self, name: str) -> int:
        """A window named by a data file (labs.json `lookback`, codesets.json `max_days_setting`)."""
        value = getattr(self, name, None) if name in _DAY_FIELDS else None
        if value is None:
            raise SettingsError(f"{name!r} is not a knowledge setting in days (one of {sorted(_DAY_FIELDS)})")
        return value

    def as_dict(self) -> dict:
        """The settings as plain JSON values (lists for tuples, dicts for nested objects; unset optional
        fields are null): a fresh copy, built from one made when first asked (every hook call's params
        fact starts from it)."""
        return _copy(self._plain)

    @cached_property
    def _plain(self) -> dict:
        return _plain(self)


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_DAY_FIELDS = frozenset(
    f.name for f in dataclasses.fields(Settings) if f.type == "int" and f.metadata.get("unit") == "days"
)


# ---- building -----------------------------------------------------------------------------------


def defaults() -> dict:
    """settings.json without its comment keys."""
    with open(SETTINGS_FILE, encoding="utf-8") as handle:
        return {k: v for k, v in json.load(handle).items() if not k.startswith("_")}


def resolve_overrides(overrides) -> dict:
    """KNOWLEDGE_OVERRIDES as a dict: given as an object, or as the path of a JSON file holding one."""
    if overrides is None:
        return {}
    if isinstance(overrides, str) and overrides.lstrip().startswith(("{", "[")):
        try:  # meant as JSON (LEGMOVE_KNOWLEDGE_OVERRIDES that did not parse arrives as a string)
            overrides = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"KNOWLEDGE_OVERRIDES is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if isinstance(overrides, (str, Path)):
        path = Path(overrides)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"KNOWLEDGE_OVERRIDES file {str(path)!r} cannot be read: {exc.strerror}") from None
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"KNOWLEDGE_OVERRIDES file {str(path)!r} is not JSON: {exc.msg} at line {exc.lineno}, "
                f"column {exc.colno}"
            ) from None
    if not isinstance(overrides, Mapping):
        raise SettingsError(f"KNOWLEDGE_OVERRIDES must be a JSON object of settings, got {type(overrides).__name__}")
    return dict(overrides)


def load(overrides=None) -> Settings:
    """The defaults with a deployment's overrides (each replaces a whole top-level key), checked."""
    merged = defaults()
    merged.update({k: v for k, v in resolve_overrides(overrides).items() if not str(k).startswith("_")})
    return from_mapping(merged)


def from_mapping(values: Mapping) -> Settings:
    settings = _build(Settings, values, "")
    if settings.iron_profile not in _field_names(IronProfiles):
        raise SettingsError(
            f"knowledge setting iron_profile {settings.iron_profile!r} is not one of "
            f"{sorted(_field_names(IronProfiles))}"
        )
    for name in ("emg_order_code", "neurology_referral_code", "head_imaging_order_code"):
        getattr(settings, name).check(name)
    for name in _DAY_FIELDS:
        if getattr(settings, name) < 0:
            raise SettingsError(
                f"knowledge setting {name} must be a number of days from 0, got {getattr(settings, name)}"
            )
    return settings


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, values, where: str):
    if not isinstance(values, Mapping):
        raise SettingsError(f"knowledge setting {where} must be an object, got {_shown(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {k: v for k, v in values.items() if not str(k).startswith("_")}
    unknown = sorted(set(given) - set(fields), key=str)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"
        raise SettingsError(f"unknown knowledge setting {_path(where, key)!r}{hint}")
    kwargs = {}
    for name, spec in fields.items():
        if name not in given:
            if spec.default is dataclasses.MISSING:
                raise SettingsError(f"knowledge setting {_path(where, name)} is missing")
            continue
        kwargs[name] = _convert(hints[name], given[name], _path(where, name))
    return cls(**kwargs)


def _path(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def _shown(value) -> str:
    return f"{value!r} ({'object' if isinstance(value, Mapping) else type(value).__name__})"


def _convert(kind, value, where: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"knowledge setting {where} must be true or false, got {_shown(value)}")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"knowledge setting {where} must be a whole number, got {_shown(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"knowledge setting {where} must be a number, got {_shown(value)}")
        return value  # as given: 60 prints as 60, 60.5 as 60.5
    if kind is str:
        if not isinstance(value, str):
            raise SettingsError(f"knowledge setting {where} must be a string, got {_shown(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise SettingsError(f"knowledge setting {where} must be a list, got {_shown(value)}")
        return tuple(_convert(args[0], item, f"{where}[{n}]") for n, item in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise SettingsError(f"knowledge setting {where} must be an object, got {_shown(value)}")
        return types.MappingProxyType({str(k): _convert(args[1], v, _path(where, k)) for k, v in value.items()})
    raise TypeError(f"no conversion for {kind!r} ({where})")  # a field type this module does not know: a bug


# ---- documentation ------------------------------------------------------------------------------


def _rows(cls, values: Mapping, prefix: str = "") -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    rows = []
    for spec in dataclasses.fields(cls):
        value = values.get(spec.name)
        key = _path(prefix, spec.name)
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind) and kind not in (LocalCode, OrderCode):
            rows += _rows(kind, value or {}, key)
            continue
        if not spec.metadata.get("listed", True) or (value is None and spec.name not in values):
            continue
        rows.append(
            (
                key,
                json.dumps(value, ensure_ascii=False),
                spec.metadata.get("unit", ""),
                spec.metadata.get("meaning", ""),
            )
        )
    return rows


def settings_table() -> str:
    """Every setting with its default, unit and meaning, as a Markdown table (docs/knowledge.md)."""
    lines = ["| Setting | Default | Unit | Meaning |", "|---|---|---|---|"]
    for key, value, unit, meaning in _rows(Settings, defaults()):
        shown = value.replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {unit} | {meaning} |")
    return "\n".join(lines)


TABLE_START = (
    "<!-- settings table: generated by `python -m cds_service.knowledge.settings --write docs/knowledge.md` -->"
)
TABLE_END = "<!-- end of the settings table -->"


def with_table(document: str) -> str:
    """`document` with the text between the table markers replaced by the current table."""
    head, start, rest = document.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError("the document has no settings-table markers")
    return f"{head}{TABLE_START}\n{settings_table()}\n{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cds_service.knowledge.settings",
        description="Print the settings table, or write it into a document between "
        "its markers; check an overrides file with --check.",
    )
    parser.add_argument("--write", metavar="DOCUMENT", help="replace the table in DOCUMENT (docs/knowledge.md)")
    parser.add_argument("--check", metavar="OVERRIDES", help="load these overrides (a JSON file or object) and report")
    args = parser.parse_args(argv)
    if args.check:
        try:
            load(args.check if Path(args.check).exists() else json.loads(args.check))
        except (SettingsError, json.JSONDecodeError) as exc:
            print(f"not usable: {exc}")
            return 1
        print("the overrides are usable")
        return 0
    if args.write:
        path = Path(args.write)
        path.write_text(with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote the settings table into {path}")
        return 0
    print(settings_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
