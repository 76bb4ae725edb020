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


# Console lines that read as noise or errors (#16.10, #17.7): Ray's own raylet/GCS/worker lines, warnings,
# tracebacks, log-level tags, Tune's result banners.
CONSOLE_NOISE = ("WARNING", "Warning", "warn", "RpcError", "Failed", "(raylet)", "gcs_server", "pid=",
                 "Traceback", "Exception", "INFO", "ERROR", "View detailed results", "\u256d")


def noise_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(m in line for m in CONSOLE_NOISE)]
