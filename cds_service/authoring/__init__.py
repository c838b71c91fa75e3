"""How a rule is written: the criteria vocabulary, the rule registry, decorators, render context and the
builders of suggested orders.

May import ``knowledge`` and the fact model ``facts.schema``; nothing above.
"""
