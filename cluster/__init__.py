"""All Ray code of cfgdiff: connection, Ray Data, the Train loop, Tune and actor inference.

Imports cfgdiff (the core) and Ray; never click or the CLI.
"""
