"""Fuzz tests report how many inputs they tried in pytest's terminal summary (with or without ``-s``)."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            props = dict(getattr(report, "user_properties", []))
            if "fuzz_inputs" in props:
                extra = ", ".join(f"{k.removeprefix('fuzz_')}={v}" for k, v in props.items() if k != "fuzz_inputs")
                lines.append(f"{report.nodeid}: {props['fuzz_inputs']} inputs ({outcome}) {extra}")
    if lines:
        terminalreporter.section("fuzz inputs tried")
        for line in lines:
            terminalreporter.write_line(line)
