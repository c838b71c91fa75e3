"""legmove-cds: a CDS Hooks 2.0 service giving decision support on involuntary leg movements.

A hook call flows one way through the subpackages, each importing only the layers before it:

- ``web``: the HTTP surface (discovery, hook and feedback endpoints, client authentication, health,
  preview and rule pages); it parses the request and hands it to ``advice``.
- ``fhir``: the patient's data: prefetch templates, FHIR reads for what the EHR did not prefetch, URL and
  scope policy.
- ``facts``: turns the FHIR resources into the engine's facts (selection, projection, medications).
- ``knowledge``: terminology (code sets, labs, procedures, drugs), settings and thresholds, sources.
- ``authoring``: how a rule is written: the registry, decorators, render context, suggested orders.
- ``engine``: the durable-rules wrapper that evaluates the rules, fact hygiene, and the rule lint.
- ``cards``: renders the fired rules as CDS Hooks cards.
- ``store``: the feedback ledger, rule governance, rule versions and the database migrations.
- ``cli``: the ``legmove-cds`` command and the client it uses.

Top-level modules: ``advice`` (one hook call end to end, tying the layers), ``services`` (the services
offered), ``hook_request`` (the validated hook request), ``metrics`` (Prometheus metrics), ``config`` and
``app`` (the application factory).
"""
