"""From FHIR resources to engine facts: which resources belong to the request, their projection into facts,
and medication resolution.

May import ``knowledge`` and ``fhir``; nothing above.
"""
