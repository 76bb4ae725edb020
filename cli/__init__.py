"""The cfgdiff command line: parse, validate, call cluster/ or cfgdiff/, print. No logic of its own."""
