"""The systemd unit (directives, `systemd-analyze verify`/`security`), install.sh, and MemoryDenyWriteExecute."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "linewatch-agent.service"
INSTALL = REPO / "systemd" / "install.sh"
VENV_AGENT = "/opt/linewatch/.venv/bin/linewatch-agent"
LOCAL_AGENT = Path(sys.executable).with_name("linewatch-agent")  # the console script of this checkout
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
MAX_EXPOSURE = 3.0  # systemd-analyze security: below 3 rates "OK"


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; repeated keys stay separate."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == section and k == key]


EXPECTED = {
    ("Service", "Type"): "notify",
    ("Service", "NotifyAccess"): "main",
    ("Service", "WatchdogSec"): "30",
    ("Service", "Restart"): "on-failure",
    ("Service", "RestartSec"): "5",
    ("Service", "TimeoutStopSec"): "30",
    ("Service", "KillSignal"): "SIGTERM",
    ("Service", "User"): "linewatch",
    ("Service", "Group"): "linewatch",
    ("Service", "StateDirectory"): "linewatch",
    ("Service", "LogsDirectory"): "linewatch",
    ("Service", "ConfigurationDirectory"): "linewatch",
    ("Service", "WorkingDirectory"): "/var/lib/linewatch",
    ("Service", "ProtectSystem"): "strict",
    ("Service", "ProtectHome"): "true",
    ("Service", "PrivateTmp"): "true",
    ("Service", "DevicePolicy"): "closed",
    ("Service", "DeviceAllow"): "char-video4linux rw",
    ("Service", "NoNewPrivileges"): "true",
    ("Service", "ProtectKernelTunables"): "true",
    ("Service", "ProtectKernelModules"): "true",
    ("Service", "ProtectKernelLogs"): "true",
    ("Service", "ProtectControlGroups"): "true",
    ("Service", "ProtectClock"): "true",
    ("Service", "ProtectHostname"): "true",
    ("Service", "RestrictNamespaces"): "true",
    ("Service", "RestrictRealtime"): "true",
    ("Service", "RestrictSUIDSGID"): "true",
    ("Service", "LockPersonality"): "true",
    ("Service", "MemoryDenyWriteExecute"): "true",
    ("Service", "SystemCallArchitectures"): "native",
    ("Service", "CapabilityBoundingSet"): "",
    ("Service", "AmbientCapabilities"): "",
    ("Service", "RestrictAddressFamilies"): "AF_UNIX AF_INET AF_INET6",
    ("Service", "UMask"): "0027",
    ("Install", "WantedBy"): "multi-user.target",
}


@pytest.mark.parametrize(("where", "value"), EXPECTED.items(), ids=[f"{s}.{k}" for s, k in EXPECTED])
def test_unit_directive(where, value):
    assert values(*where) == [value]


def test_unit_commands_credentials_and_paths():
    config = "--config /etc/linewatch/agent.yaml"
    assert values("Service", "ExecStart") == [f"{VENV_AGENT} run {config}"]
    assert values("Service", "ExecStartPre") == [f"{VENV_AGENT} check-config {config}"]
    assert values("Service", "LoadCredential") == [
        "mqtt-password:/etc/linewatch/credentials/mqtt-password",
        "s3-secret-key:/etc/linewatch/credentials/s3-secret-key",
    ]
    assert "PYTHONUNBUFFERED=1" in values("Service", "Environment")
    assert values("Service", "SystemCallFilter")[0] == "@system-service"
    writable = values("Service", "ReadWritePaths")[0].split()
    assert "/var/lib/linewatch" in writable
    assert any(p.lstrip("-").startswith("/srv/linewatch") for p in writable)
    assert not values("Service", "DynamicUser")
    assert values("Service", "PrivateDevices") in ([], ["false"])


def _analyze_supports(option: str) -> bool:
    out = subprocess.run([ANALYZE, "--help"], capture_output=True, text=True, check=False)
    return option in out.stdout


def _runnable_copy(tmp_path: Path, extra: str = "") -> Path:
    """The unit with ExecStart/ExecStartPre pointing at the console script installed here."""
    text = UNIT.read_text().replace(VENV_AGENT, str(LOCAL_AGENT))
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n", 1)
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    cmd = [ANALYZE, "verify"]
    cmd += [opt for opt in ("--man=no", "--generators=no") if _analyze_supports(opt.split("=")[0])]
    return subprocess.run([*cmd, unit.name], cwd=unit.parent, capture_output=True, text=True, check=False, timeout=120)


def _tolerated(line: str) -> bool:
    """Only complaints about the service user/group, which this container does not have."""
    return "linewatch" in line and re.search(r"user|group", line, re.IGNORECASE) is not None


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path):
    result = _verify(_runnable_copy(tmp_path))
    other = [line for line in (result.stdout + result.stderr).splitlines() if line.strip() and not _tolerated(line)]
    assert result.returncode == 0, result.stdout + result.stderr
    assert other == []


@needs_analyze
def test_verify_would_catch_a_broken_directive(tmp_path: Path):
    result = _verify(_runnable_copy(tmp_path, extra="ProtectSytem=strict"))
    assert "ProtectSytem" in result.stdout + result.stderr


def _security(unit: Path) -> tuple[float, str, str]:
    """(exposure, rating, report) of ``systemd-analyze security --offline=true``."""
    if not _analyze_supports("--offline"):
        pytest.skip("systemd-analyze security --offline needs systemd >= 252")
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", unit.name],
        cwd=unit.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    score = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert score, result.stdout[-2000:]
    return float(score.group(1)), score.group(2), result.stdout


def _user_line(report: str) -> str:
    return next(line.strip() for line in report.splitlines() if "User=/DynamicUser=" in line)


@needs_analyze
def test_systemd_analyze_security_offline(tmp_path: Path):
    exposure, rating, report = _security(_runnable_copy(tmp_path))
    print(f"\nsystemd-analyze security --offline=true: exposure {exposure} {rating}")
    assert exposure < MAX_EXPOSURE and rating == "OK", report[-3000:]
    assert _user_line(report).startswith("✓") and "non-root" in _user_line(report)


@needs_analyze
def test_security_check_would_catch_root(tmp_path: Path):
    baseline, _, _ = _security(_runnable_copy(tmp_path))
    (tmp_path / "as-root").mkdir()
    copy = _runnable_copy(tmp_path / "as-root")
    copy.write_text(copy.read_text().replace("User=linewatch", "User=root"))
    exposure, _, report = _security(copy)
    assert _user_line(report).startswith("✗") and exposure > baseline


def test_service_user_is_not_root():
    users = values("Service", "User")
    assert users and users[-1] not in ("root", "0", "")
    assert values("Service", "Group")[-1] not in ("root", "0", "")
    assert not any(v.startswith("+") or v.startswith("!") for v in values("Service", "ExecStart"))  # no full privileges


# --- install.sh ----------------------------------------------------------------------------------------------------


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def test_install_script_syntax():
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    assert INSTALL.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in INSTALL.read_text()


def test_install_dry_run_under_prefix_changes_nothing(tmp_path: Path):
    prefix = tmp_path / "root"
    result = _install("--dry-run", "--prefix", str(prefix))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not prefix.exists()
    assert f"install -m 0644 {UNIT} {prefix}/etc/systemd/system/linewatch-agent.service" in out
    assert f"{prefix}/etc/linewatch/agent.yaml" in out and "agent.example.yaml" in out
    assert f"install -d -m 0700 {prefix}/etc/linewatch/credentials" in out
    assert f"-m pip install --quiet --disable-pip-version-check {prefix}/opt/linewatch\\[edge\\]" in out
    assert "systemctl" not in out  # nothing run against the host


def test_install_dry_run_keeps_an_existing_config(tmp_path: Path):
    etc = tmp_path / "etc" / "linewatch"
    etc.mkdir(parents=True)
    (etc / "agent.yaml").write_text("site config\n")
    result = _install("--dry-run", "--prefix", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "keeping existing" in result.stdout
    assert "agent.example.yaml" not in result.stdout
    assert (etc / "agent.yaml").read_text() == "site config\n"


def test_install_rejects_bad_arguments(tmp_path: Path):
    assert _install("--bogus").returncode != 0
    assert _install("--dry-run", "--start", "--prefix", str(tmp_path)).returncode != 0
    assert _install("--dry-run", "--prefix", "relative").returncode != 0
    assert "--dry-run" in _install("--help").stdout


def test_install_script_is_shellcheck_clean():
    assert shutil.which("shellcheck"), "shellcheck missing: `make system-deps` installs it (apt-get install shellcheck)"
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


# --- MemoryDenyWriteExecute= -----------------------------------------------------------------------------------------

MDWE_PROBE = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    print("NO-MDWE"); sys.exit(0)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("MDWE-NOT-ENFORCED"); sys.exit(1)
except OSError:
    pass
import numpy as np, cv2, sqlite3, json, http.server  # noqa
import edge_agent.metrics, edge_agent.systemd_notify  # noqa
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    print("NO-LITERT"); sys.exit(0)
model = sys.argv[1] if len(sys.argv) > 1 else ""
if model:
    it = Interpreter(model_path=model, num_threads=2)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    it.invoke()
    print("INVOKED", model)
print("MDWE-OK")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_runtime_works_without_writable_executable_memory():
    """The kernel's MDWE (what MemoryDenyWriteExecute= enforces) must not break imports or TFLite/XNNPACK."""
    models = sorted(REPO.glob("bundles/*/*.tflite"))
    cmd = [sys.executable, "-c", MDWE_PROBE, *(str(models[0]) for _ in models[:1])]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=120)
    if "NO-MDWE" in result.stdout:
        pytest.skip("kernel without PR_SET_MDWE")
    if "NO-LITERT" in result.stdout:
        pytest.skip("ai-edge-litert not installed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MDWE-OK" in result.stdout
    print(f"\nMDWE probe: {'inference on ' + models[0].name if models else 'imports only (no bundle here)'} ok")
