"""Helpers shared by the CLI tests."""

from __future__ import annotations

import pytest

from cli.main import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the cfgdiff CLI in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
