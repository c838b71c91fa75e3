"""The rule engine: the durable-rules wrapper and evaluation, fact hygiene, and the rule lint.

May import ``knowledge`` and ``authoring``; nothing above.
"""
