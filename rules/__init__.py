"""Clinical rule modules, one per topic. Importing a module registers its rules.

Each module's docstring states the recommendations it implements, their sources by title, and per
card rule its inclusion and exclusion criteria; docs/knowledge.md says which sources the rules
follow and why, docs/rules.md lists every rule as compiled. Add a new module here;
`cds_service.services` reads the registry, never the modules directly.
"""

from importlib import import_module

MODULES = (
    "rules.diagnoses",
    "rules.iron",
    "rules.rls_drugs",
    "rules.cramps",
    "rules.plm",
    "rules.fasciculation",
    "rules.myoclonus",
    "rules.mimics",
    "rules.special_populations",
)


def load_all(extra: tuple[str, ...] | list[str] = ()) -> None:
    """Import the bundled modules, then any a deployment adds (config EXTRA_RULE_MODULES)."""
    for name in (*MODULES, *extra):
        import_module(name)


# How every rule reads chart data: printed at the top of the rule catalog (`legmove-cds rules`).
CONVENTIONS = """\
## How chart data is read (all rules)

- **No cards for a deceased patient** (`Patient.deceasedBoolean` true, or any `deceasedDateTime`): the chart is
  being reviewed, not treated. A patient whose Patient resource could not be had is treated as alive (logged).
- **Partial dates are ranges.** `birthDate: "2016"` is any day of 2016. The age group is known only when the whole
  range falls on one side of 18 (born in 2016 is a child in 2026). Otherwise, or with no birth date, the age is
  unknown: R2 and R7 use the adult thresholds and say the age is uncertain; R20 proposes no gabapentinoid.
- **Stale "active" pregnancies do not count.** A pregnancy counts for R19 and R20 only while its onset (else its
  recorded date; for a partial date, its earliest day) is within `pregnancy_max_days` (300) of today; an undated
  pregnancy never counts. Charts leave pregnancies marked active for years.
- **Results given as text.** A `valueString` with a number and an optional comparator and unit (`"<10"`,
  `"< 10 ng/mL"`, `">1000"`) is read like a `valueQuantity`; without a unit it is read in the analyte's canonical
  unit, and the card says so. A comparator makes the value a bound: "<10" is below 50, ">60" is not below 50.
  Cards keep the comparator ("ferritin <10 ng/mL"). A `valueQuantity.comparator` outside `<`, `<=`, `>`, `>=`
  makes the result unreadable.
- **Unreadable results never count as "on file".** A result that counts by status and date but has no readable
  number, no value (`dataAbsentReason`) or a unit the analyte is not reported in (ferritin in `mg/L` or `g/L`:
  a likely mislabel, never converted) is not used by any rule, and absence rules treat the analyte as missing:
  R1 fires and names the unreadable ferritin. A preliminary result is a pending test.
- **Medications known only by reference** (`medicationReference: Medication/123`) are resolved from a contained
  Medication, from a Medication in any Bundle of the call (an `_include`, say) or in `draftOrders`, and otherwise
  by reading `Medication/{id}` from `fhirServer` within what is left of the call's FHIR deadline. A medication
  that cannot be resolved is unknown: it matches no class and never proves absence (for a chart medication its
  data key counts as incomplete, so R20 cannot call a dopaminergic order a new start).
- **First-generation antihistamines the product table lacks** (dexchlorpheniramine, brompheniramine,
  dexbrompheniramine, clemastine, carbinoxamine) are sedating antihistamines, matched by ATC code (R06AB02,
  R06AB01, R06AB06, R06AA04, R06AA08) and by whole-word ingredient name, also inside a combination product that
  the table lists under another ingredient only (codeine / dexchlorpheniramine). The table itself has no rows for
  them: a product coded only with an RxNorm code unknown to the table, and without its name in the text, is not
  recognised.
- **A PLMS index known only by its name** (no local `plms_index_code`) is found by its own search
  (`plms_index_by_text`: `Observation?code:text=plm index,plmi,plms index,periodic limb movement index,...`),
  on both data paths. FHIR servers match `:text` like a string search, so the name must begin the code's text or
  display; "PLMS arousal index" is never taken for it.
"""
