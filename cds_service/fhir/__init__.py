"""The patient's data: prefetch templates and their resolution, the FHIR client, FHIR reads and bundle
searches, URL and SMART scope policy, and the bundled example patients.

May import ``knowledge`` and the top-level ``metrics``; nothing above.
"""
