"""Iron stores in restless legs syndrome (R1, R2).

Recommendation: measure iron stores in every patient with restless legs, even when the haemoglobin
is normal, and offer iron when they are low. The review articles treat a ferritin below 50 ng/mL as
low. The AASM 2024 guideline asks for ferritin and transferrin saturation, drawn in the morning and
at least a day after any iron-containing supplement; it advises iron when ferritin is at or below
75 ng/mL or transferrin saturation below 20 %, IV iron only when ferritin is between 75 and
100 ng/mL, and for a child iron when ferritin is below 50 ng/mL (that last figure comes from a
secondary summary and has not been checked against the full text).

Sources: Differential Diagnosis of Involuntary Lower Left Leg Jerking, Differential Diagnoses for
Intractable Leg Spasms and New Involuntary Leg Fasciculation: Evaluation and Management (Dr.Oracle
Medical Advisory Board, 2025); AASM 2024 clinical practice guideline on RLS and PLMD, Winkelman et
al., J Clin Sleep Med 2024 (doi:10.5664/jcsm.11390).

The two sets of numbers are the iron profiles of the settings: `iron_profile` chooses the one that
decides (docs/knowledge.md says why the review articles' profile is the default). `assess_iron` is
the whole threshold logic, written once for both profiles, so every card can also state the other
profile's verdict.

- R1, RLS without a recent ferritin. Include: restless legs on the problem list (suspected or
  confirmed), on opening the chart, or on selecting an RLS drug or an iron product. Exclude: a
  readable final ferritin within `ferritin_lookback_days`; a ferritin ordered or awaiting its final
  result; lab results or orders the service could not read. A ferritin in an unknown unit, or text
  without a number, does not count as on file: the card names it.
- R2, RLS with low iron stores. Include: restless legs and the latest usable ferritin (with the
  transferrin saturation when one is on file) within the lookback that meets the active profile: a
  warning to treat with iron, or, under the AASM profile, to prefer IV iron in the 75-100 band. Under
  the review articles' profile, an info card when only the AASM 2024 thresholds are met
  (`show_guideline_disagreement`). On order-select, only when an RLS drug is selected. Exclude:
  values above the thresholds; a value reported as a bound that cannot be compared (">20" against
  50); results older than the lookback or in a unit not understood (R1 applies instead).
"""

from cds_service.authoring.criteria import (
    all_of,
    any_of,
    data_gap,
    finding,
    other_than,
    params,
    patient,
    pending,
    readable_result,
    result,
    selected_draft,
)
from cds_service.authoring.orders import lab_order, medication_proposal
from cds_service.authoring.rulebook import CardDraft, SuggestionDraft, card_rule, derivation, escape, fill

from .common import AASM_2024, AASM_2024_URL, CATALOG, SEED_000, SEED_001, SEED_002, review_triggers, seeds

SEEDS_IRON = seeds(SEED_000, SEED_001, SEED_002)
DRAW_ADVICE = (
    "Draw in the morning, fasting, and at least 24 h after the last iron-containing supplement "
    "(AASM 2024 good-practice statement)."
)
FERROUS_SULFATE_325 = ("310325", "ferrous sulfate 325 MG Oral Tablet")
ACUTE_PHASE = (
    "Ferritin is an acute-phase reactant (raised by inflammation, CKD and liver disease) and assays "
    "differ; read the value against the clinical picture."
)


# ---- when is an iron review due? ----------------------------------------------------------

review_triggers(
    view_id="F-IRON-DUE-VIEW",
    order_id="F-IRON-DUE-ORDER",
    produces="iron_check_due",
    module=__name__,
    citation=f"{CATALOG} R1, R2 (hooks)",
    titles=("Iron review due on opening the chart", "Iron review due when an RLS drug or iron is selected"),
    selected_drug=selected_draft(group=("rls_drug", "iron"), alias="drug"),
    order_logic="order-select with a selected RLS drug or iron product",
    trigger=lambda drug: "rls_drug" if "rls_drug" in drug["groups"] else "iron",
)


# ---- R1 -----------------------------------------------------------------------------------


@card_rule(
    id="R1",
    title="RLS without recent ferritin",
    citation=f"{SEEDS_IRON}; {AASM_2024}",
    source_url=AASM_2024_URL,
    hooks=("patient-view", "order-select"),
    needs=("labs", "service_requests"),
    logic="present(RLS) and no readable final ferritin within the lookback (a result in an unknown unit, text "
    "without a number or with no value does not count, and is named) and no pending ferritin order or result "
    "(order-select: only when an RLS drug or iron is selected)",
    when=all_of(
        inclusion=[finding("rls", alias="rls"), finding("iron_check_due", alias="due")],
        exclusion=[result("ferritin"), pending("ferritin"), data_gap("labs", "service_requests")],
    ),
)
def rls_without_ferritin(matches, ctx):
    lookback = ctx.settings.ferritin_lookback_days
    months = round(lookback / 30.4)
    unreadable = ctx.facts_of("unreadable_result", analyte="ferritin")
    why = (
        f"Restless legs syndrome is on the problem list and no {'readable ' if unreadable else ''}ferritin result "
        f"from the last {months} months, nor a pending ferritin, was found. Check ferritin and transferrin saturation."
    )
    notes = [
        "The review articles ask for ferritin in every patient with restless legs, even when haemoglobin is "
        "normal; the AASM 2024 guideline asks for ferritin and transferrin saturation.",
        DRAW_ADVICE,
    ]
    order = SuggestionDraft(
        label="Order iron studies",
        is_recommended=True,
        actions=[
            lab_order(ctx.patient_id, "2276-4", "Ferritin [Mass/volume] in Serum or Plasma", DRAW_ADVICE),
            lab_order(ctx.patient_id, "50190-8", "Iron and Iron binding capacity panel - Serum or Plasma", DRAW_ADVICE),
        ],
    )
    return CardDraft(
        summary=fill(
            "RLS on the problem list and no {readable}ferritin in the last {months} months: "
            "check ferritin and transferrin saturation",
            months=str(months),
            readable="readable " if unreadable else "",
        ),
        indicator="info",
        why=why,
        notes=notes,
        evidence=[f for match in matches for f in (match["rls"], match["due"])] + unreadable,
        thresholds={"ferritin_lookback_days": lookback, "ferritin_loinc": ["2276-4", "20567-4", "24373-3"]},
        suggestions=[order],
        override_reasons=[
            ("already-ordered", "Already ordered or drawn elsewhere"),
            ("not-clinically-relevant", "Not clinically relevant for this patient"),
        ],
    )


# ---- iron stores: one assessment, both profiles ------------------------------------------


def _below(lab: dict, limit: float, inclusive: bool = False) -> bool | None:
    """Is the value below `limit` (or at it, if inclusive)? A comparator makes the value a bound
    (a bound): '<5' is below 10, '>60' is not below 50, '>20' against 50 is unknown (None)."""
    value, comparator = lab["value"], lab["comparator"]
    if comparator == "=":
        return value <= limit if inclusive else value < limit
    if comparator in ("<", "<="):  # the true value is at most `value`
        certain = value <= limit if (comparator == "<" or inclusive) else value < limit
        return True if certain else None
    certain_not = value > limit if (comparator == ">=" and inclusive) else value >= limit  # at least `value`
    return False if certain_not else None


def assess_iron(ferritin: dict, tsat: dict | None, patient: dict, params: dict) -> dict:
    """The verdict of each profile ('indicated', 'iv_only', 'in_range' or 'unknown') and the one to show."""
    seed_low = _below(ferritin, params["seed_ferritin_iron_indicated_below"])
    seed = {True: "indicated", False: "in_range", None: "unknown"}[seed_low]
    tsat_low = _below(tsat, params["aasm2024_tsat_iron_indicated_below"]) if tsat else False
    if patient["child"]:
        aasm = {True: "indicated", False: "in_range", None: "unknown"}[
            _below(ferritin, params["aasm2024_child_ferritin_iron_indicated_below"])
        ]
    else:
        at_or_below_75 = _below(ferritin, params["aasm2024_ferritin_iron_indicated_at_or_below"], inclusive=True)
        up_to_100 = _below(ferritin, params["aasm2024_iv_only_up_to"], inclusive=True)
        if at_or_below_75 or tsat_low:
            aasm = "indicated"
        elif at_or_below_75 is None or up_to_100 is None or tsat_low is None:
            aasm = "unknown"
        else:
            aasm = "iv_only" if up_to_100 else "in_range"
    shown = seed if params["profile"] == "seed" else aasm
    if (
        params["profile"] == "seed"
        and shown == "in_range"
        and aasm == "indicated"
        and params["show_guideline_disagreement"]
    ):
        shown = "disagreement"
    return {
        "verdict": shown,
        "seed_verdict": seed,
        "aasm_verdict": aasm,
        "profile": params["profile"],
        "ferritin": ferritin["value"],
        "ferritin_comparator": ferritin["comparator"],
        "tsat": tsat["value"] if tsat else -1.0,
        "tsat_comparator": tsat["comparator"] if tsat else "=",
        "child": patient["child"],
        "age_known": patient.get("age_known", True),
        "by_tsat": bool(tsat_low)
        and not bool(_below(ferritin, params["aasm2024_ferritin_iron_indicated_at_or_below"], True)),
    }


def iron_verdict(ctx) -> dict | None:
    """R2's assessment for this patient from the call's facts (None without a usable ferritin), for
    cards that must say whether iron comes first (R19, R20) on hooks where R2 itself does not run."""
    ferritin, tsat = ctx.labs("ferritin", usable=True), ctx.labs("tsat", usable=True)
    if not ferritin:
        return None
    return assess_iron(ferritin[-1], tsat[-1] if tsat else None, ctx.patient, ctx.params)


def _iron_inputs() -> list:
    """RLS, an iron review due for a reason other than an iron order, and a readable ferritin."""
    return [
        finding("rls", alias="rls"),
        finding("iron_check_due", alias="due", trigger=other_than("iron")),
        params(),
        patient(),
        readable_result("ferritin", alias="ferritin"),
    ]


@derivation(
    id="F-IRON-STORES",
    title="Iron stores assessed (ferritin and TSAT)",
    citation=f"{CATALOG} R2 and 7",
    when=all_of(inclusion=[*_iron_inputs(), readable_result("tsat", alias="tsat")]),
    produces="iron_stores",
    needs=("labs", "patient"),
    logic="RLS and a usable ferritin and TSAT within the lookback: verdict of both profiles",
)
def iron_stores_with_tsat(match):
    return assess_iron(match["ferritin"], match["tsat"], match["patient"], match["params"])


@derivation(
    id="F-IRON-STORES-FERRITIN",
    title="Iron stores assessed (ferritin only)",
    citation=f"{CATALOG} R2 and 7",
    when=all_of(inclusion=_iron_inputs(), exclusion=[readable_result("tsat")]),
    produces="iron_stores",
    needs=("labs", "patient"),
    logic="RLS and a usable ferritin within the lookback, no usable TSAT: verdict of both profiles",
)
def iron_stores_ferritin_only(match):
    return assess_iron(match["ferritin"], None, match["patient"], match["params"])


# ---- R2 -----------------------------------------------------------------------------------


@card_rule(
    id="R2",
    title="RLS with low iron stores",
    citation=f"{SEEDS_IRON}; {AASM_2024}",
    source_url=AASM_2024_URL,
    hooks=("patient-view", "order-select"),
    needs=("labs", "medication_requests", "patient"),
    analytes=("ferritin", "tsat", "hemoglobin"),  # the detail prints all three
    logic="present(RLS) and the latest ferritin (and TSAT) within the lookback meet the active profile "
    "(seed: ferritin < 50 ng/mL; AASM 2024: <= 75 or TSAT < 20 %, IV only 75-100, child < 50); with the "
    "seed profile an info card when only AASM 2024 is met; order-select only when an RLS drug is selected",
    when=all_of(
        inclusion=[finding("iron_stores", alias="iron", verdict=any_of("indicated", "iv_only", "disagreement"))]
    ),
)
def rls_low_iron(matches, ctx):
    iron = matches[0]["iron"]
    params = ctx.params
    t = thresholds_in_use(params)
    labs = {f["analyte"]: f for f in ctx.facts_of("lab") if f["analyte"] in ("ferritin", "tsat", "hemoglobin")}
    on_iron = [f for f in ctx.facts_of("medication", origin="chart") if "iron" in f.get("groups", [])]
    value = _bound(iron["ferritin_comparator"]) + _number(iron["ferritin"])  # "<10": a bound keeps its comparator
    tsat = _bound(iron["tsat_comparator"]) + _number(iron["tsat"]) if iron["tsat"] >= 0 else "n/a"
    verdict, profile = iron["verdict"], iron["profile"]
    notes = ([] if verdict == "disagreement" else [_other_source(iron, t)]) + [ACUTE_PHASE]
    if iron["child"] and profile == "aasm2024":
        notes.append(
            f"For a child the guideline threshold used is ferritin < {t['child']} ng/mL; that figure comes "
            "from a secondary source and has not been verified."
        )
    if not iron["age_known"]:
        notes.append(
            "The patient's age is uncertain (birth date missing or only partly known), so the adult "
            "thresholds are used."
        )
    hb = labs.get("hemoglobin")
    if hb and hb.get("below_reference"):
        notes.append("Haemoglobin is below its reference range: evaluate the cause of iron deficiency.")
    suggestions = []
    if verdict == "iv_only":
        action = "Consider IV rather than oral iron (e.g. ferric carboxymaltose); no order is proposed."
    elif verdict == "indicated" and on_iron:
        action = "The patient is already on iron: recheck ferritin."
        notes.append(
            "Already on iron: " + "; ".join(f"{escape(f['name'])} since {escape(f['since'])}" for f in on_iron) + "."
        )
    elif verdict == "indicated":
        action = "Consider iron supplementation."
        suggestions.append(
            SuggestionDraft(
                label="Start oral iron (ferrous sulfate 325 mg tablet)",
                actions=[medication_proposal(ctx.patient_id, *FERROUS_SULFATE_325)],
            )
        )
    else:
        action = "Consider whether iron supplementation is warranted."
    found = {
        "seed": f"Restless legs syndrome with ferritin {value} ng/mL, below the {t['seed']} ng/mL at which the review "
        "articles advise iron.",
        "aasm2024": (
            f"Restless legs syndrome with transferrin saturation {tsat} %, below the AASM 2024 guideline's "
            f"{t['tsat']} %."
            if iron["by_tsat"]
            else f"Restless legs syndrome with ferritin {value} ng/mL, within the AASM 2024 guideline's iron "
            f"threshold (≤ {t['aasm']} ng/mL)."
            if verdict == "indicated"
            else f"Restless legs syndrome with ferritin {value} ng/mL, in the {t['iv_above']}-{t['iv_up_to']} "
            "ng/mL band where the AASM 2024 guideline suggests IV iron only."
        ),
        "disagreement": (
            f"Ferritin {value} ng/mL is not below the {t['seed']} ng/mL used by the review articles but "
            f"is within the AASM 2024 guideline's iron threshold (≤ {t['aasm']} ng/mL)."
            if not iron["by_tsat"]
            else f"Ferritin {value} ng/mL is not below the {t['seed']} ng/mL used by the review articles, but "
            f"transferrin saturation {tsat} % is below the AASM 2024 guideline's {t['tsat']} %."
        ),
    }["disagreement" if verdict == "disagreement" else profile]
    summary = {
        ("indicated", "seed"): fill(
            "RLS with ferritin {value} ng/mL (below {threshold}): iron supplementation indicated",
            value=value,
            threshold=t["seed"],
        ),
        ("indicated", "aasm2024"): (
            fill(
                "RLS with ferritin {value} ng/mL, TSAT {tsat}%: meets the AASM 2024 threshold for iron therapy",
                value=value,
                tsat=tsat,
            )
            if tsat != "n/a"
            else fill("RLS with ferritin {value} ng/mL: meets the AASM 2024 threshold for iron therapy", value=value)
        ),
        ("iv_only", "aasm2024"): fill(
            "RLS with ferritin {value} ng/mL ({low}-{high}): AASM 2024 suggests IV rather than oral iron",
            value=value,
            low=t["iv_above"],
            high=t["iv_up_to"],
        ),
        ("disagreement", "seed"): (
            fill(
                "Ferritin {value} ng/mL: iron therapy per AASM 2024 (≤ {aasm}), though not "
                "below the {seed} of older reviews",
                value=value,
                aasm=t["aasm"],
                seed=t["seed"],
            )
            if not iron["by_tsat"]
            else fill(
                "TSAT {tsat}%: iron therapy per AASM 2024 (< {tsat_limit}%), though ferritin "
                "{value} ng/mL is not below the {seed} of older reviews",
                tsat=tsat,
                tsat_limit=t["tsat"],
                value=value,
                seed=t["seed"],
            )
        ),
    }[(verdict, profile)]
    return CardDraft(
        summary=summary,
        indicator="info" if verdict == "disagreement" else "warning",
        why=f"{found} {action}",
        notes=notes,
        evidence=[iron, *labs.values(), *on_iron],
        thresholds={
            "profile": profile,
            "profileTitle": params["profile_title"],
            "profileSource": params["profile_source"],
            **{f"{k}": v for k, v in t.items()},
            "verdict": verdict,
            "seedVerdict": iron["seed_verdict"],
            "aasmVerdict": iron["aasm_verdict"],
        },
        suggestions=suggestions,
        override_reasons=[
            ("patient-contraindication", "Iron contraindicated or not tolerated"),
            ("already-treated", "Iron already given or planned"),
        ],
    )


def thresholds_in_use(params: dict) -> dict[str, str]:
    """The iron numbers this call evaluated (settings and overrides), formatted once for every text."""
    return {
        "seed": _number(params["seed_ferritin_iron_indicated_below"]),
        "aasm": _number(params["aasm2024_ferritin_iron_indicated_at_or_below"]),
        "tsat": _number(params["aasm2024_tsat_iron_indicated_below"]),
        "iv_above": _number(
            params.get("aasm2024_iv_only_above", params["aasm2024_ferritin_iron_indicated_at_or_below"])
        ),
        "iv_up_to": _number(params["aasm2024_iv_only_up_to"]),
        "child": _number(params["aasm2024_child_ferritin_iron_indicated_below"]),
    }


def _other_source(iron: dict, t: dict) -> str:
    words = {
        "indicated": "iron therapy is indicated",
        "iv_only": "IV iron only is suggested",
        "in_range": "iron stores are in range",
        "unknown": "no verdict (the value is reported as a bound)",
    }
    if iron["profile"] == "seed":
        return (
            f"Under the AASM 2024 guideline (ferritin ≤ {t['aasm']} ng/mL or transferrin saturation < {t['tsat']} %): "
            f"{words[iron['aasm_verdict']]}."
        )
    return f"Under the review articles' threshold (ferritin < {t['seed']} ng/mL): {words[iron['seed_verdict']]}."


def _bound(comparator: str) -> str:
    return "" if comparator == "=" else comparator


def _number(value) -> str:
    return f"{round(float(value), 1):g}"
