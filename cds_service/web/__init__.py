"""The HTTP surface: CDS Hooks endpoints, client authentication, health and metrics endpoints, logging,
the preview and rule pages, templates and static files.

May import every layer except ``cli`` and ``app``.
"""
