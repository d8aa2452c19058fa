"""make install / make uninstall (deploy/install.sh), staged with DESTDIR= so that nothing outside
the test's folder is touched: the files and their modes, the venv path and working directory
written into the units, the env file kept across installs, and the staged tree accepted by
systemd's own tools (systemd-analyze verify, systemd-sysusers, systemd-tmpfiles) where they
are installed.  The venv itself is not built here (DESTDIR stages files only)."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_systemd import _unit_dir, verify_units

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = ("stagewise-manager.service", "stagewise-executor@.service")

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd is Linux-only"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def make(target: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFIX", "VENV", "WHEEL", "DESTDIR", "MAKEFLAGS")
    }
    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT), target, *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def unit(path: Path) -> configparser.SectionProxy:
    p = configparser.RawConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(path)
    return p["Service"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_stages_the_files_with_the_prefix(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    out = make("install", f"DESTDIR={stage}", "PREFIX=/opt/sw-test")
    assert "no venv built" in out.stdout
    units = stage / "etc/systemd/system"
    for name in UNITS:
        assert mode(units / name) == 0o644
    assert mode(stage / "usr/lib/sysusers.d/stagewise.conf") == 0o644
    assert mode(stage / "usr/lib/tmpfiles.d/stagewise.conf") == 0o644
    assert mode(stage / "etc/stagewise") == 0o755
    assert mode(stage / "etc/stagewise/stagewise.env") == 0o600  # it will hold secrets
    assert (stage / "etc/stagewise/stagewise.env").read_text() == (
        DEPLOY / "stagewise.env.example"
    ).read_text()
    assert (stage / "opt/sw-test").is_dir() and not (stage / "opt/sw-test/venv").exists()

    manager = unit(units / "stagewise-manager.service")
    executor = unit(units / "stagewise-executor@.service")
    assert manager["ExecStart"] == "/opt/sw-test/venv/bin/stagewise manager"
    assert executor["ExecStart"] == (
        "/opt/sw-test/venv/bin/stagewise executor ${STAGEWISE_APP} --concurrency ${STAGEWISE_CONCURRENCY}"
        " --processes ${STAGEWISE_PROCESSES}"
    )
    assert manager["WorkingDirectory"] == executor["WorkingDirectory"] == "/opt/sw-test"
    tmpfiles = (stage / "usr/lib/tmpfiles.d/stagewise.conf").read_text()
    assert "d     /opt/sw-test  0755 root root  -" in tmpfiles.splitlines()
    for f in [units / n for n in UNITS] + [stage / "usr/lib/tmpfiles.d/stagewise.conf"]:
        assert "/opt/stagewise" not in f.read_text(), f
    # Beyond its header, an installed unit is the deploy/ one with the two paths replaced.
    for name in UNITS:
        installed = (units / name).read_text().splitlines()
        assert installed[0].startswith("# Installed by deploy/install.sh")
        source = (DEPLOY / name).read_text().replace("/opt/stagewise", "/opt/sw-test").splitlines()
        assert installed[3:] == source


def test_venv_outside_the_prefix_and_a_prefix_that_extends_the_default(tmp_path: Path) -> None:
    make("install", f"DESTDIR={tmp_path / 'a'}", "PREFIX=/opt/stagewise2")
    a = unit(tmp_path / "a/etc/systemd/system/stagewise-manager.service")
    assert a["ExecStart"] == "/opt/stagewise2/venv/bin/stagewise manager"
    assert a["WorkingDirectory"] == "/opt/stagewise2"

    make("install", f"DESTDIR={tmp_path / 'b'}", "VENV=/srv/sw/venv")
    b = unit(tmp_path / "b/etc/systemd/system/stagewise-executor@.service")
    assert b["ExecStart"].startswith("/srv/sw/venv/bin/stagewise executor ")
    assert b["WorkingDirectory"] == "/opt/stagewise"


def test_install_again_keeps_the_env_file_and_uninstall_keeps_the_settings(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    make("install", f"DESTDIR={stage}")
    env = stage / "etc/stagewise/stagewise.env"
    env.write_text("STAGEWISE_REDIS_URL=redis://:secret@10.0.0.5:6379/0\n")
    (stage / "etc/stagewise/executor-billing.env").write_text("STAGEWISE_APP=apps.billing:app\n")
    out = make("install", f"DESTDIR={stage}")
    assert "kept" in out.stdout
    assert env.read_text() == "STAGEWISE_REDIS_URL=redis://:secret@10.0.0.5:6379/0\n"
    assert unit(stage / "etc/systemd/system/stagewise-manager.service")["Type"] == "notify"

    wants = stage / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "stagewise-executor@billing.service").symlink_to(
        "/etc/systemd/system/stagewise-executor@.service"
    )
    make("uninstall", f"DESTDIR={stage}")
    assert not (wants / "stagewise-executor@billing.service").is_symlink()  # enabled, never disabled
    for name in UNITS:
        assert not (stage / "etc/systemd/system" / name).exists()
    assert not (stage / "usr/lib/sysusers.d/stagewise.conf").exists()
    assert not (stage / "usr/lib/tmpfiles.d/stagewise.conf").exists()
    assert env.exists() and (stage / "etc/stagewise/executor-billing.env").exists()


@pytest.mark.parametrize("prefix", ["opt/stagewise", "/opt/stage wise", "/opt/50%", "/opt/a|b"])
def test_install_refuses_a_path_it_cannot_write_into_a_unit(tmp_path: Path, prefix: str) -> None:
    out = make("install", f"DESTDIR={tmp_path}", f"PREFIX={prefix}", check=False)
    assert out.returncode != 0
    assert "PREFIX" in out.stderr
    assert not (tmp_path / "etc").exists()


def test_systemd_tools_accept_the_staged_tree(tmp_path: Path) -> None:
    """systemd-analyze verify on the installed units (as tests/test_systemd.py verifies the
    deploy/ ones), systemd-sysusers and systemd-tmpfiles on the installed entries, each in a
    root of the test's own."""
    tools = {t: shutil.which(t) for t in ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles")}
    missing = sorted(t for t, path in tools.items() if path is None)
    if len(missing) == len(tools):
        pytest.skip("none of systemd-analyze, systemd-sysusers, systemd-tmpfiles is installed")
    root = tmp_path / "root"
    make("install", f"DESTDIR={root}", "PREFIX=/opt/sw-test")
    checked = []

    sysusers = tools["systemd-sysusers"]
    if sysusers:
        out = subprocess.run([sysusers, f"--root={root}"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        users = {line.split(":")[0]: line for line in (root / "etc/passwd").read_text().splitlines()}
        assert "stagewise" in users
        assert "stagewise" in {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}
        checked.append("sysusers")

    tmpfiles = tools["systemd-tmpfiles"]
    if tmpfiles and sysusers:  # the entries name root:root, which the root's /etc/passwd must know
        shutil.rmtree(root / "opt/sw-test")
        out = subprocess.run(
            [tmpfiles, "--create", f"--root={root}", "stagewise.conf"],  # found in the root
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert (root / "opt/sw-test").is_dir() and mode(root / "opt/sw-test") == 0o755
        checked.append("tmpfiles")

    analyze = tools["systemd-analyze"]
    units = _unit_dir()
    if analyze and units is not None:
        verify_units(analyze, units, root, root / "opt/sw-test/venv/bin/stagewise")
        checked.append("verify")
    if missing:
        pytest.skip(f"checked {', '.join(checked) or 'nothing'}; not installed: {', '.join(missing)}")
