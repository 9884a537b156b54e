"""The installed layout: one top-level name, ``mpqc``, whatever the repository's folders are
called."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

import mpqc

REPO = pathlib.Path(mpqc.__file__).resolve().parent.parent
SUBPACKAGES = ["mpqc.core", "mpqc.ir", "mpqc.passes", "mpqc.search", "mpqc.hwspecs", "mpqc.tools"]
BARE = ["core", "ir", "passes", "search", "hwspecs", "tools"]


def _site_dirs() -> list[pathlib.Path]:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [pathlib.Path(d).resolve() for d in dirs]


def _installed() -> importlib.metadata.Distribution:
    """The distribution pip installed into site-packages (not a stray egg-info in the working
    tree)."""
    for dist in importlib.metadata.distributions(name="mpqc"):
        if pathlib.Path(dist.locate_file("")).resolve() in _site_dirs():
            return dist
    pytest.fail("mpqc is not installed in site-packages (pip install -e . or pip install .)")


def _top_level(paths: list[str]) -> set[str]:
    names = set()
    for path in paths:
        first = pathlib.PurePosixPath(path).parts[0]
        if (
            first in ("..", "__pycache__")
            or first.endswith((".dist-info", ".data"))
            or first.startswith("__editable__")
        ):
            continue  # scripts, metadata, and the editable install's own finder
        names.add(first.removesuffix(".py").removesuffix(".pth"))
    return names


def test_the_distribution_installs_only_mpqc() -> None:
    dist = _installed()
    assert (dist.read_text("top_level.txt") or "").split() == ["mpqc"]
    assert _top_level([str(f) for f in dist.files or []]) <= {"mpqc"}


def test_an_editable_install_maps_every_folder_into_mpqc() -> None:
    dist = _installed()
    finders = [
        str(f)
        for f in dist.files or []
        if str(f).startswith("__editable__") and str(f).endswith("_finder.py")
    ]
    if not finders:
        pytest.skip("not an editable install")
    finder = importlib.import_module(pathlib.PurePosixPath(finders[0]).stem)
    assert set(finder.MAPPING) == {"mpqc", *SUBPACKAGES}
    assert pathlib.Path(finder.MAPPING["mpqc.ir"]).name == "ir"


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_import(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__name__ == name
    assert sys.modules[name] is module


def test_console_scripts_point_into_mpqc() -> None:
    scripts = {
        ep.name: ep.value for ep in _installed().entry_points if ep.group == "console_scripts"
    }
    assert scripts == {
        "mpqc": "mpqc.cli:main",
        "mpqc-opt": "mpqc.tools.opt:main",
        "mpqc-hw": "mpqc.tools.hw:main",
    }


def test_no_bare_folder_names_are_importable(tmp_path: pathlib.Path) -> None:
    """Outside the checkout, only ``mpqc`` is importable: the folders never leak as ``ir``,
    ``passes``..."""
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) "
        f"for n in {BARE!r}}}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    found = {name: origin for name, origin in json.loads(run.stdout).items() if origin}
    assert not found, f"bare names import mpqc's folders: {found}"


@pytest.mark.parametrize(
    "command",
    [
        ["-c", "import mpqc; print(mpqc.__file__)"],
        ["-m", "mpqc.cli", "--help"],
        ["-m", "bench.suite", "--help"],
    ],
)
def test_the_repository_root_does_not_shadow_mpqc(command: list[str]) -> None:
    """From the checkout's root (where a user runs ``python -m bench.suite``), ``mpqc`` is the
    installed one."""
    run = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_a_built_wheel_holds_one_package_with_its_data(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("wheel", reason="building without isolation needs the wheel package")
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    source = tmp_path / "src"
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("mpqc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"mpqc", wheel.name.split("-py")[0] + ".dist-info"}
    for needed in (
        "mpqc/ir/__init__.py",
        "mpqc/passes/analysis/__init__.py",
        "mpqc/passes/lower/lower_qdq.py",
        "mpqc/hwspecs/schema.json",
        "mpqc/hwspecs/specs/generic.yaml",
        "mpqc/tools/opt.py",
    ):
        assert needed in names

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = (
        "import mpqc, mpqc.passes, mpqc.search, mpqc.tools.opt; "
        "from mpqc import hwspecs; hwspecs.load('generic'); print(mpqc.__file__)"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert pathlib.Path(run.stdout.strip()).is_relative_to(target)


def test_setup_cfg_lists_every_package_folder() -> None:
    """A non-editable install ships only the packages setup.cfg names: a new subpackage missing
    there imports fine from a checkout (editable) and fails after ``pip install .``."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    folders = {
        line.split("=")[0].strip(): line.split("=")[1].strip()
        for line in config["options"]["package_dir"].strip().splitlines()
    }
    found = set()
    for name, folder in folders.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *relative)))
    assert found == listed
