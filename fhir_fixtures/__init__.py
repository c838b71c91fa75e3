"""The bundled example patients: each fixture is a complete CDS Hooks request with its expected cards.

Data only; read with importlib.resources (cds_service.fhir.examples), so it works from an installed wheel.
"""
