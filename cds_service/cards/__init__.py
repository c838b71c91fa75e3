"""Rendering fired rules as CDS Hooks cards.

May import ``knowledge`` and ``authoring``; nothing above.
"""
