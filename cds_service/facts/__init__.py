"""From FHIR resources to engine facts: which resources belong to the request, their projection into facts,
and medication resolution.

May import ``knowledge`` and ``fhir``; nothing above. ``facts.schema`` (the fact model) is ranked apart, below
``authoring``: it imports only ``knowledge``, so rule authoring and the engine's lint can read it.
"""
