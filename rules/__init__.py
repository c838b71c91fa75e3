"""Clinical rule modules, one per topic. Importing a module registers its rules.

Add a new module here; `cds_service.services` reads the registry, never the modules directly.
"""
from importlib import import_module

MODULES = ("rules.diagnoses", "rules.iron", "rules.rls_drugs", "rules.cramps")


def load_all() -> None:
    for name in MODULES:
        import_module(name)
