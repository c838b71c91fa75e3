"""The bundled example patients: each fixture is a complete CDS Hooks request with its expected cards.

Data only; read with importlib.resources (cds_service.examples), so it works from an installed wheel.
"""
