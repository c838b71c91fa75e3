"""What the service keeps: the feedback ledger, rule governance and its report, rule versions, and the
database migrations.

May import ``knowledge``, ``authoring``, ``cards``, ``config`` and ``advice``'s layers; not ``web`` or ``cli``.
"""
