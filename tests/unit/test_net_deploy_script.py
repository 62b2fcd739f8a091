"""scripts/deploy_ssh.sh in --dry-run: the commands it would run across machines."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "deploy_ssh.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


def dry_run(tmp_path: Path, *extra: str) -> list[str]:
    exp = tmp_path / "exp.toml"
    exp.write_text("[data]\n")
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# ssh target, client id, data dir\nu@10.0.0.11 0 /data/a\n\nu@10.0.0.12 1\n")
    out = subprocess.run(
        ["bash", str(SCRIPT), "--experiment", str(exp), "--coordinator", "u@10.0.0.10:7070",
         "--hosts", str(hosts), "--dry-run", *extra],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.splitlines()


def test_each_machine_gets_only_its_own_key(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "--certs", str(tmp_path / "certs"))
    scp = [ln for ln in lines if ln.startswith("+ scp") and ".key" in ln]
    assert len(scp) == 3
    assert "coordinator.key" in scp[0] and "u@10.0.0.10:" in scp[0]
    assert "worker-0.key" in scp[1] and "u@10.0.0.11:" in scp[1] and "worker-1" not in scp[1]
    assert "worker-1.key" in scp[2] and "u@10.0.0.12:" in scp[2] and "worker-0" not in scp[2]
    starts = [ln for ln in lines if "-m\\ fedkit\\ " in ln]
    assert "coordinator" in starts[0] and "--tls-dir" in starts[0]
    assert "--client-id\\ 0" in starts[1] and "/data/a" in starts[1] and "worker-0" in starts[1]
    assert "--client-id\\ 1" in starts[2] and "--data" not in starts[2]
    assert all("10.0.0.10:7070" in s for s in starts[1:])


def test_insecure_mode_copies_no_keys(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "--insecure")
    assert not [ln for ln in lines if ".key" in ln or ".pem" in ln]
    assert all("--insecure" in ln for ln in lines if "-m\\ fedkit\\ " in ln)


def test_missing_arguments_fail_clearly(tmp_path: Path) -> None:
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--experiment" in out.stderr
