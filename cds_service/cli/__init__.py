"""The ``legmove-cds`` command: its subcommands, the CDS client it drives, the configuration report and
the pre-start step gunicorn runs.

The top layer with ``app``: may import any other layer.
"""
