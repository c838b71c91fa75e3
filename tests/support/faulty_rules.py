"""A deliberately broken rule, loaded only into the gunicorn process of the load test
(EXTRA_RULE_MODULES): its renderer raises for patients whose id starts with 'boom-'."""

from durable.lang import c, m, when_all

from cds_service.authoring.rulebook import card_rule


@card_rule(
    id="X-FAULT",
    title="Fault injection",
    citation="tests/test_load_isolation.py",
    hooks=("patient-view",),
    logic="raises for 'boom-' patients",
    when=when_all(c.ctx << (m.kind == "context")),
)
def explode_for_boom_patients(matches, ctx):
    if ctx.patient_id.startswith("boom-"):
        raise RuntimeError("injected fault")
    return None
