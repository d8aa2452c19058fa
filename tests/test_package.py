"""The package as a user gets it: the sdist and the wheel built from a copy of the repository,
the wheel installed in a clean venv, and the daemons run from that venv in a user's project
that has its own `shared`, `manager` and `executor` packages (the names of our source folders,
which must not leak into the installed package).

The clean venv gets the wheel only (``--no-deps``); its dependencies come from the dev venv
through a .pth file, so a run downloads nothing.  The .pth adds the dev venv's site-packages as
a plain directory: the .pth files in it (the editable install's import hook among them) are not
run, so `stagewise` can only come from the wheel, which the tests check.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import tomllib
import uuid
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import stagewise
from tests.helpers import REPO_ROOT, Proc, free_port, wait_for

VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]

# Not copied for the build: local state at the top, caches anywhere, earlier builds' leftovers.
_NOT_SOURCES_AT_TOP = {".git", ".venv", "build", "run", "bench/out", "bench/.venv-peers"}
_NOT_SOURCES = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    rel = Path(folder).relative_to(REPO_ROOT)
    return {
        n
        for n in names
        if n in _NOT_SOURCES or n.endswith(".egg-info") or (rel / n).as_posix() in _NOT_SOURCES_AT_TOP
    }


def _run(argv: Sequence[str | Path], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@dataclass
class Dist:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist and the wheel, built as `python -m build` does (the wheel from the unpacked
    sdist, so a file the sdist lacks is missing from the wheel too), from a copy of the
    repository: the build writes its egg-info and build/ beside the sources."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(REPO_ROOT, src, ignore=_ignore)
    out = tmp / "out"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], timeout=120)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist, wheel)


@dataclass
class Venv:
    root: Path
    bin: Path
    env: dict[str, str]  # for its processes: nothing from this repo on their path


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv").resolve() / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", root], timeout=60)
    python = root / "bin" / "python"
    # the dev venv's pip installs into it (pip --python): the clean venv needs no pip of its own
    pip = [sys.executable, "-m", "pip", "--python", python]
    _run([*pip, "install", "-q", "--no-deps", "--no-index", dist.wheel], timeout=120)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib], 30).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_dev_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STAGEWISE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    return Venv(root, root / "bin", env)


# --------------------------------------------------------------------------- the built files


def test_wheel_installs_one_top_level_package(dist: Dist) -> None:
    names = zipfile.ZipFile(dist.wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"stagewise", f"stagewise-{VERSION}.dist-info"}
    for f in (
        "stagewise/py.typed",
        "stagewise/storage/scripts/create.lua",
        "stagewise/manager/static/index.html",
    ):
        assert f in names
    for package in ("stagewise/client", "stagewise/cli", "stagewise/manager", "stagewise/executor"):
        assert f"{package}/__init__.py" in names
    assert f"stagewise-{VERSION}.dist-info/licenses/LICENSE" in names
    meta = zipfile.ZipFile(dist.wheel).read(f"stagewise-{VERSION}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta.splitlines()


def test_sdist_carries_deploy_examples_docs_tests(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for f in (
        "README.md",
        "LICENSE",
        "pyproject.toml",
        "deploy/stagewise-manager.service",
        "deploy/stagewise-executor@.service",
        "examples/app.py",
        "docs/dashboard.png",
        "tests/conftest.py",
        "tests/test_package.py",
        "shared/client/aio.py",
    ):
        assert f in names, f
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_public_names() -> None:
    """`from stagewise import X` for each name of __all__, which is the lazy export table."""
    assert sorted(stagewise.__all__) == sorted(stagewise._EXPORTS)
    for name, module in stagewise._EXPORTS.items():
        assert getattr(stagewise, name) is getattr(import_module(module), name)


# --------------------------------------------------------------------------- the installed package

_USER_PROJECT = {
    # a user's own packages named like our source folders: they are what `import shared` finds
    "shared/__init__.py": "",
    "shared/util.py": "def double(x: int) -> int:\n    return 2 * x\n",
    "manager/__init__.py": "",
    "manager/naming.py": "def label(x: int) -> str:\n    return f'x={x}'\n",
    "executor/__init__.py": "",
    "executor/steps.py": "def inc(x: int) -> int:\n    return x + 1\n",
    "userapp.py": """
        from executor.steps import inc
        from manager.naming import label
        from shared.util import double

        from stagewise import App, Ctx

        app = App("userapp")


        @app.method("userapp.work")
        def work(x: int, ctx: Ctx) -> dict:
            return {"value": inc(double(x)), "label": label(x), "task": ctx.task_id}
    """,
    "produce.py": """
        # The producer side: a task for the user's app, its final view once it ended.
        import json
        import os
        import sys

        import stagewise
        from stagewise import Client

        url, task_id = sys.argv[1:]
        task = {"id": task_id, "app": "userapp", "commands": [{"method": "userapp.work", "params": {"x": 20}}]}
        with Client(url, timeout=10) as c:
            c.create(task)
            c.wait(task_id, timeout=30)
            view = c.get(task_id)
        where = os.path.realpath(stagewise.__file__)
        print(json.dumps({"file": where, "version": stagewise.__version__, "view": view}))
    """,
}


class ProjectProc(Proc):
    """A daemon of the clean venv, run in the user's project (Proc runs in the repository)."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path
    ) -> None:
        self.name, self.argv, self.env, self.log_path = name, list(argv), env, log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for rel, text in _USER_PROJECT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.fixture
async def stopped_at_end() -> AsyncIterator[list[Proc]]:
    """Processes appended here are stopped after the test (SIGTERM, then SIGKILL)."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                await p.wait_exit(10)
            except AssertionError:
                p.kill()
                p.proc.wait()


def _alive(p: Proc) -> None:
    if not p.alive:
        raise AssertionError(f"{p.name} exited with {p.returncode}")


async def _arun(argv: Sequence[str | Path], cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run a process of the clean venv to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 45)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv} did not end within 45 s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_installed_wheel_runs_a_user_project(
    venv: Venv, project: Path, redis_url: str, stopped_at_end: list[Proc], tmp_path: Path
) -> None:
    version = await _arun([venv.bin / "stagewise", "--version"], project, venv.env)
    assert version == (0, f"stagewise {VERSION}\n", "")

    http = f"127.0.0.1:{free_port()}"
    env = venv.env | {
        "STAGEWISE_REDIS_URL": redis_url,
        "STAGEWISE_NAMESPACE": "pkg" + uuid.uuid4().hex[:8],
        "STAGEWISE_HTTP": http,
        "STAGEWISE_PING_INTERVAL": "0.5",
        "STAGEWISE_GRACE": "1",
    }
    manager = ProjectProc(
        "manager", [str(venv.bin / "stagewise"), "manager"], env, tmp_path / "manager.log", project
    )
    stopped_at_end.append(manager)
    executor = ProjectProc(
        "executor",
        [str(venv.bin / "stagewise"), "executor", "userapp:app", "--concurrency", "2"],
        env,
        tmp_path / "executor.log",
        project,
    )
    stopped_at_end.append(executor)

    def logs() -> str:
        return f"--- manager ---\n{manager.log_tail()}\n--- executor ---\n{executor.log_tail()}"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http_session:

        async def registered() -> bool:
            _alive(manager)
            _alive(executor)
            body = {"jsonrpc": "2.0", "id": 1, "method": "executors.list"}
            try:
                async with http_session.post(f"http://{http}/rpc", json=body) as resp:
                    reply = await resp.json()
            except (aiohttp.ClientError, TimeoutError):
                return False  # the manager is not listening yet
            return any(e.get("app") == "userapp" for e in reply.get("result") or [])

        try:
            await wait_for(registered, timeout=30, interval=0.05, what="the user's executor to register")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{logs()}") from None

    tid = "pkg-" + uuid.uuid4().hex[:8]
    rc, out, err = await _arun([venv.bin / "python", "produce.py", f"http://{http}", tid], project, venv.env)
    assert rc == 0, f"{err}\n{logs()}"
    got = json.loads(out)
    installed = Path(got["file"])  # resolved by produce.py
    assert installed.is_relative_to(venv.root) and not installed.is_relative_to(REPO_ROOT), installed
    assert got["version"] == VERSION
    view = got["view"]
    assert view["status"] == "FINISHED", view
    assert view["results"] == [{"value": 41, "label": "x=20", "task": tid}]


def test_every_source_package_is_in_the_wheel_list() -> None:
    """A subpackage missing from [tool.setuptools] packages is left out of the wheel, while an
    editable install still finds it: the list must name every folder with an __init__.py."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in conf["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder).parts
            name = ".".join((package, *rel))
            if not any(
                name.startswith(other + ".") or name == other
                for other in conf["package-dir"]
                if other != package and other.startswith(package + ".")
            ):
                found.add(name)
    assert found == set(conf["packages"])
