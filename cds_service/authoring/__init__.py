"""How a rule is written: the rule registry, decorators, render context and the builders of suggested orders.

May import ``knowledge``; nothing above.
"""
