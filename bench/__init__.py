"""Benchmarks that print figures; no pass/fail on time. `python -m bench --help`."""
