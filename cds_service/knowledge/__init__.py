"""Clinical knowledge as data: terminology matchers (code sets, labs, procedures, drugs), settings and
thresholds, and the sources the cards cite.

The lowest layer: imports nothing else from the package.
"""
