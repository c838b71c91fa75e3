"""Iron stores in restless legs syndrome: R1 (no recent ferritin) and R2 (low ferritin).

Seeds 000 and 001 ask for ferritin in every patient with suspected RLS, even with a normal
haemoglobin (001), and treat ferritin below 50 ng/mL as an indication for iron (000).
The threshold comes from the active profile (`settings.json`), asserted as the `params` fact,
so switching profile changes data, not rules.
"""
from durable.lang import c, item, m, none, when_all

from cds_service.orders import lab_order, medication_proposal
from cds_service.rulebook import CardDraft, SuggestionDraft, card_rule, derivation, escape, fill

SEEDS_IRON = "seed 000_e09f97222edeabb3.txt, 001_9c4bd8494c6f1f15.txt, 002_bc010253c106cbbd.txt"
AASM_2024_URL = "https://doi.org/10.5664/jcsm.11390"
DRAW_ADVICE = ("Draw in the morning, fasting, and at least 24 h after the last iron-containing supplement "
               "(AASM 2024 good-practice statement).")
FERROUS_SULFATE_325 = ("310325", "ferrous sulfate 325 MG Oral Tablet")


# ---- when is an iron review due? ----------------------------------------------------------

@derivation(id="F-IRON-DUE-VIEW", title="Iron review due on opening the chart",
            citation="shared/reference/clinical-rules.md R1, R2 (hooks)",
            when=when_all(c.ctx << ((m.kind == "context") & (m.hook == "patient-view"))),
            produces="iron_check_due", logic="the hook is patient-view")
def iron_due_on_view(match):
    return {"trigger": "patient-view"}


@derivation(id="F-IRON-DUE-ORDER", title="Iron review due when an RLS drug or iron is selected",
            citation="shared/reference/clinical-rules.md R1, R2 (hooks)",
            when=when_all(c.ctx << ((m.kind == "context") & (m.hook == "order-select")),
                          c.drug << ((m.kind == "medication") & (m.origin == "draft") & (m.selected == True)
                                     & (m.groups.anyItem((item == "rls_drug") | (item == "iron"))))),
            produces="iron_check_due", logic="order-select with a selected RLS drug or iron product")
def iron_due_on_order(match):
    drug = match["drug"]
    return {"trigger": "rls_drug" if "rls_drug" in drug["groups"] else "iron", "resource_ref": drug["resource_ref"]}


# ---- R1 -----------------------------------------------------------------------------------

@card_rule(id="R1", title="RLS without recent ferritin", citation=SEEDS_IRON, source_url=AASM_2024_URL,
           hooks=("patient-view", "order-select"), needs=("labs", "lab_orders"),
           logic="present(RLS) and no final ferritin within the lookback and no pending ferritin order "
                 "(order-select: only when an RLS drug or iron is selected)",
           when=when_all(
               c.rls << ((m.kind == "finding") & (m.name == "rls")),
               c.due << ((m.kind == "finding") & (m.name == "iron_check_due")),
               none((m.kind == "lab") & (m.analyte == "ferritin")),
               none((m.kind == "pending_lab_order") & (m.analyte == "ferritin")),
               none((m.kind == "data_gap") & ((m.key == "labs") | (m.key == "lab_orders"))),
           ))
def rls_without_ferritin(matches, ctx):
    months = round(int(ctx.settings["ferritin_lookback_days"]) / 30.4)
    why = (f"Restless legs syndrome is on the problem list, and no final ferritin result (LOINC 2276-4, 20567-4, "
           f"24373-3) dated within the last {months} months was found, nor a pending ferritin order. "
           "Seeds 000 and 001 ask for ferritin in every patient with RLS, even when haemoglobin is normal (001).\n\n"
           + DRAW_ADVICE)
    order = SuggestionDraft(
        label="Order iron studies",
        is_recommended=True,
        actions=[lab_order(ctx.patient_id, "2276-4", "Ferritin [Mass/volume] in Serum or Plasma", DRAW_ADVICE),
                 lab_order(ctx.patient_id, "50190-8", "Iron and Iron binding capacity panel - Serum or Plasma", DRAW_ADVICE)],
    )
    return CardDraft(
        summary=fill("RLS on the problem list and no ferritin in the last {months} months: "
                     "check ferritin and transferrin saturation", months=str(months)),
        indicator="info",
        why=why,
        evidence=[f for match in matches for f in (match["rls"], match["due"])],
        suggestions=[order],
        override_reasons=[("already-ordered", "Already ordered or drawn elsewhere"),
                          ("not-clinically-relevant", "Not clinically relevant for this patient")],
    )


# ---- R2 -----------------------------------------------------------------------------------

@card_rule(id="R2", title="RLS with low iron stores", citation=SEEDS_IRON, source_url=AASM_2024_URL,
           hooks=("patient-view", "order-select"), needs=("labs", "medication_requests"),
           logic="present(RLS) and the latest ferritin within the lookback is below the profile threshold "
                 "(seed: < 50 ng/mL); order-select only when an RLS drug is selected",
           when=when_all(
               c.rls << ((m.kind == "finding") & (m.name == "rls")),
               c.due << ((m.kind == "finding") & (m.name == "iron_check_due") & (m.trigger != "iron")),
               c.params << (m.kind == "params"),
               # The alias-reference comparison must come before the `|` group: durable-rules 2.0.28
               # ignores it when it follows one (the engine lint rejects that shape).
               c.ferritin << ((m.kind == "lab") & (m.analyte == "ferritin") & (m.usable == True)
                              & (m.value < c.params.ferritin_iron_indicated_below)
                              & ((m.comparator == "=") | (m.comparator == "<") | (m.comparator == "<="))),
           ))
def rls_low_ferritin(matches, ctx):
    ferritin = matches[0]["ferritin"]
    params = matches[0]["params"]
    threshold = params["ferritin_iron_indicated_below"]
    value = _number(ferritin["value"])
    on_iron = [f for f in ctx.facts if f.get("kind") == "medication" and f.get("origin") == "chart"
               and "iron" in f.get("groups", [])]
    why = (f"Restless legs syndrome is on the problem list and the latest ferritin is **{value} ng/mL**, below "
           f"the {params['profile_title']} threshold of {threshold} ng/mL ({params['profile_source']}). Seed 000: "
           "a ferritin below 50 ng/mL means iron supplementation is needed.\n\n"
           "Ferritin is an acute-phase reactant (raised by inflammation, CKD and liver disease) and assays differ; "
           "check the value against the clinical picture.")
    suggestions = []
    if on_iron:
        why += "\n\nAlready on iron: " + "; ".join(f"{escape(f['name'])} since {escape(f['since'])}" for f in on_iron) + ". Recheck ferritin."
    else:
        suggestions.append(SuggestionDraft(label="Start oral iron (ferrous sulfate 325 mg tablet)",
                                           actions=[medication_proposal(ctx.patient_id, *FERROUS_SULFATE_325)]))
    return CardDraft(
        summary=fill("RLS with ferritin {value} ng/mL (below {threshold}): iron supplementation indicated",
                     value=value, threshold=_number(threshold)),
        indicator="warning",
        why=why,
        evidence=[ferritin, matches[0]["rls"]] + on_iron,
        suggestions=suggestions,
        override_reasons=[("patient-contraindication", "Iron contraindicated or not tolerated"),
                          ("already-treated", "Iron already given or planned")],
    )


def _number(value) -> str:
    return f"{float(value):g}"
