"""Clinical rule modules, one per topic. Importing a module registers its rules.

Add a new module here; `cds_service.services` reads the registry, never the modules directly.
"""
from importlib import import_module

MODULES = ("rules.diagnoses", "rules.iron", "rules.rls_drugs", "rules.cramps", "rules.plm", "rules.fasciculation",
           "rules.myoclonus", "rules.mimics", "rules.special_populations")


def load_all(extra: tuple[str, ...] | list[str] = ()) -> None:
    """Import the bundled modules, then any a deployment adds (config EXTRA_RULE_MODULES)."""
    for name in (*MODULES, *extra):
        import_module(name)
