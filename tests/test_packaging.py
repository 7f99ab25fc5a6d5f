"""The distribution behaves like a library: its wheel installs `xattn` and `xattn_app` and no other top-level
name (the checkout's app/ folder installs as `xattn_app`), and `xattn-app` runs from outside the checkout,
installed from the wheel or editable (as CI installs it). `python -m app` still runs from a checkout.

Both installs go into bare virtual environments that see this one's packages (torch, gradio, setuptools)
through a .pth line, so nothing is downloaded and nothing of this environment's own xattn install leaks in.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OWN = {"xattn", "xattn_app"}                                  # the only import names the distribution adds
SOURCES = {"xattn": ROOT / "xattn", "xattn_app": ROOT / "app"}  # installed name -> folder in the checkout
MODELS = sorted(p.name.removesuffix(".card.json") for p in (ROOT / "assets" / "models").glob("*.card.json"))
BIN = "Scripts" if os.name == "nt" else "bin"

# What the probe prints, run by an installed interpreter from an empty folder.
PROBE = """
import importlib.util, json
import xattn, xattn_app
from xattn import registry
app = importlib.util.find_spec("app")
print(json.dumps({"xattn": xattn.__file__, "xattn_app": xattn_app.__file__, "app": app and app.origin,
                  "models_dir": str(registry.MODELS_DIR), "models": sorted(registry.available())}))
"""


def run(*cmd: object, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a command without this session's PYTHONPATH (which may point at the checkout); fail with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def pip(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args, cwd=cwd)


def bare_venv(path: Path) -> Path:
    """A venv without pip whose only view of this environment is a .pth line listing its site-packages (so
    their .pth hooks, such as an editable xattn finder, do not run there). Returns its python."""
    run(sys.executable, "-m", "venv", "--without-pip", path, cwd=path.parent)
    python = path / BIN / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=path).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_outer_env.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


def probe(python: Path, cwd: Path) -> dict:
    return json.loads(run(python, "-c", PROBE, cwd=cwd).stdout.strip().splitlines()[-1])


def within(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the checkout: a stale build/ or *.egg-info in the checkout cannot leak into the wheel."""
    dst = tmp_path_factory.mktemp("source") / "xattn-src"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
        "tmp", "bench", "tests"))
    return dst


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir", "-q", "-w", out, source,
        cwd=out)
    (built,) = out.glob("xattn-*.whl")
    return built


def test_wheel_holds_only_the_projects_names(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == OWN, f"top-level names other than the project's: {sorted(top - OWN)}"
    # The package list in pyproject.toml is explicit (it renames app/): every module of the checkout is in it.
    for name, folder in SOURCES.items():
        expected = {f"{name}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.py")}
        expected |= {f"{name}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.js")}   # page scripts
        assert expected <= set(names), f"missing from the wheel: {sorted(expected - set(names))}"
    data = "xattn-0.1.0.data/data/share/xattn/models/"
    assert {f"{data}{m}.safetensors" for m in MODELS} <= set(names)


def test_wheel_install_runs_outside_the_checkout(wheel: Path, tmp_path: Path):
    python = bare_venv(tmp_path / "venv")
    pip("--python", python, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    installed = {p.name for p in site.iterdir()} - {"__pycache__", "zz_outer_env.pth"}
    assert {n for n in installed if not n.endswith(".dist-info")} == OWN

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = probe(python, elsewhere)
    assert within(found["xattn"], site) and within(found["xattn_app"], site)
    assert not within(found["app"], tmp_path), found["app"]
    assert within(found["models_dir"], tmp_path / "venv") and found["models"] == MODELS

    help_text = run(tmp_path / "venv" / BIN / "xattn-app", "--help", cwd=elsewhere).stdout
    assert help_text.startswith("usage: xattn-app") and "--port" in help_text


def test_editable_install_runs_outside_the_checkout(source: Path, tmp_path: Path):
    """CI's `pip install -e .`: setuptools' editable finder maps xattn_app onto app/ and adds no `app`."""
    python = bare_venv(tmp_path / "venv")
    pip("--python", python, "install", "--no-deps", "--no-index", "--no-build-isolation", "-q", "-e", source,
        cwd=tmp_path)
    found = probe(python, tmp_path)
    assert Path(found["xattn"]).resolve() == (source / "xattn" / "__init__.py").resolve()
    assert Path(found["xattn_app"]).resolve() == (source / "app" / "__init__.py").resolve()
    assert not within(found["app"], source), f"`import app` reaches the checkout: {found['app']}"
    assert found["models"] == MODELS

    help_text = run(tmp_path / "venv" / BIN / "xattn-app", "--help", cwd=tmp_path).stdout
    assert help_text.startswith("usage: xattn-app") and "--port" in help_text


def test_python_m_app_from_a_checkout():
    help_text = run(sys.executable, "-m", "app", "--help", cwd=ROOT).stdout
    assert help_text.startswith("usage: xattn-app") and "--port" in help_text
