"""Packaging: the base install runs built bundles (numpy + onnxruntime, no torch); building is the ``build`` extra.

A command that needs an extra which is not installed names it (``pip install -e ".[build]"``, from a checkout) instead of
failing with a traceback. The last tests build a wheel of this checkout and install it, with its base
dependencies only, into a virtual environment of its own, kept in the pytest cache (``$MEDEXPORT_PACKAGING_VENV``
to put it elsewhere) and made again when the dependencies change; they skip with the reason where
``python -m venv`` does not work or the package index cannot be reached.
"""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from medexport.errors import MedexportError, MissingExtraError
from medexport.extras import EXTRA_OF, explain, require

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]

BASE = {"numpy", "onnxruntime", "click", "rich", "safetensors", "pillow"}
BUILD = {"torch", "onnx", "onnxscript", "polygraphy", "matplotlib"}


def names(requirements) -> dict[str, Requirement]:
    parsed = [Requirement(r) for r in requirements]
    return {r.name.lower(): r for r in parsed}


# --- pyproject.toml ----------------------------------------------------------------------------------------------


def test_the_base_install_is_what_running_a_bundle_needs():
    base = names(PROJECT["dependencies"])
    assert set(base) == BASE
    assert not set(base) & BUILD


def test_building_is_the_build_extra():
    build = names(EXTRAS["build"])
    assert set(build) == BUILD
    assert str(build["torch"].specifier) == str(Requirement("torch>=2.9,<2.14").specifier)


def test_extras_that_need_torch_pull_build_and_name_only_extras_that_exist():
    for extra in ("ode", "vae", "test"):
        self_refs = [r for r in map(Requirement, EXTRAS[extra]) if r.name == "medexport"]
        assert self_refs and "build" in set().union(*(r.extras for r in self_refs)), extra
    for extra, requirements in EXTRAS.items():
        for r in map(Requirement, requirements):
            if r.name == "medexport":
                assert r.extras <= set(EXTRAS), (extra, r)
    test = names(EXTRAS["test"])
    assert test["medexport"].extras == {"build", "ode", "triton"}
    assert {"pytest", "import-linter"} <= set(test)
    assert {"rtx", "gpu", "tensorrt", "triton"} <= set(EXTRAS)


def test_pillow_is_listed_once():
    everything = [*PROJECT["dependencies"], *(r for reqs in EXTRAS.values() for r in reqs)]
    assert [r for r in everything if Requirement(r).name.lower() == "pillow"] == ["pillow>=10"]


def test_the_version_comes_from_version_py_which_imports_nothing():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "medexport.version.__version__"}
    tree = ast.parse((REPO / "medexport" / "version.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    import medexport.version

    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", medexport.version.__version__)


def test_every_registered_marker_is_used():
    markers = [m.split(":")[0].strip() for m in PYPROJECT["tool"]["pytest"]["ini_options"].get("markers", [])]
    text = "\n".join(p.read_text() for p in (REPO / "tests").rglob("*.py"))
    assert [m for m in markers if f"mark.{m}" not in text] == []


# --- medexport.extras --------------------------------------------------------------------------------------------


def test_require_imports_or_names_the_extra():
    assert require("json", "build", "x") is json
    with pytest.raises(MissingExtraError) as info:
        require("medexport_no_such_package.sub", "build", "medexport build")
    e = info.value
    assert isinstance(e, MedexportError) and isinstance(e, ImportError)
    assert str(e) == (
        "medexport build needs medexport_no_such_package.sub, which is not installed: "
        'pip install -e ".[build]" from a medexport checkout'
    )
    assert (e.module, e.extra) == ("medexport_no_such_package.sub", "build")


def test_an_installed_module_that_fails_to_import_keeps_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "medexport_broken_package.py").write_text("import medexport_its_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("medexport_broken_package", "build", "x")
    assert not isinstance(info.value, MissingExtraError)
    assert info.value.name == "medexport_its_missing_dependency"


def test_explain_knows_the_extras_packages_only():
    e = explain(ModuleNotFoundError("No module named 'torch'", name="torch"), "medexport build")
    assert str(e) == (
        'medexport build needs torch, which is not installed: pip install -e ".[build]" from a medexport checkout'
    )
    assert explain(ModuleNotFoundError(name="torchdiffeq"), "p").extra == "ode"
    assert explain(ModuleNotFoundError(name="torch._C"), "p") is None  # torch is there, broken or another version
    assert explain(ModuleNotFoundError(name="yaml"), "p") is None
    assert set(EXTRA_OF.values()) <= set(EXTRAS)
    for module, extra in EXTRA_OF.items():
        assert module in names(EXTRAS[extra]), module


# --- the command line without torch ------------------------------------------------------------------------------

WITHOUT_TORCH = textwrap.dedent("""
    import sys
    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "onnxscript", "polygraphy", "matplotlib"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Absent())
    from medexport.cli import cli
    cli(sys.argv[1:], prog_name="medexport")
""")


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.parametrize("command", [["build"], ["info", "x.pt"]])
def test_a_command_that_needs_torch_says_which_extra_to_install(command):
    out = run_without_torch(*command)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip() == (
        f"error: medexport {command[0]} needs torch, which is not installed: "
        f'pip install -e ".[build]" from a medexport checkout'
    )


def test_help_and_version_work_without_torch():
    out = run_without_torch("--help")
    assert out.returncode == 0, out.stderr
    assert "build" in out.stdout and "sample" in out.stdout
    for command in ("build", "verify", "inspect"):  # a command's help loads none of what the command runs
        out = run_without_torch(command, "--help")
        assert out.returncode == 0 and "Usage:" in out.stdout, out.stderr
    import medexport

    out = run_without_torch("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"medexport, version {medexport.__version__}"


# --- a wheel, installed with its base dependencies alone ---------------------------------------------------------


def _pip(python: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _index_reachable(python: Path, where: Path) -> bool:
    try:
        return (
            _pip(python, "download", "--no-deps", "-q", "-d", str(where), "setuptools>=68", timeout=180).returncode == 0
        )
    except subprocess.TimeoutExpired:
        return False


def _needs_index(step: str, out: subprocess.CompletedProcess, python: Path, where: Path) -> None:
    """Fail on a failed pip step, or skip where the reason is that the package index cannot be reached."""
    if out.returncode == 0:
        return
    if not _index_reachable(python, where):
        pytest.skip(f"{step} needs the package index, which cannot be reached from here")
    pytest.fail(f"{step} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


@pytest.fixture(scope="session")
def base_venv(request, tmp_path_factory):
    """A virtual environment holding a wheel of this checkout and its base dependencies; its python."""
    root = Path(os.environ.get("MEDEXPORT_PACKAGING_VENV") or request.config.cache.mkdir("packaging-venv"))
    python = root / "bin" / "python"
    work = tmp_path_factory.mktemp("packaging")
    key = hashlib.sha256(json.dumps([sys.version, PROJECT["dependencies"]]).encode()).hexdigest()
    stamp = root / "medexport-deps.sha256"
    if not (python.exists() and stamp.exists() and stamp.read_text() == key):
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(root)], check=True, capture_output=True, timeout=300
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            pytest.skip(f"python -m venv does not work here ({e}): the packaging tests need it")
    # The wheel of the working tree as it is now, built from a copy (building writes build/ and egg-info).
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "medexport", src / "medexport", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    )
    wheels = work / "wheels"
    out = _pip(python, "wheel", "--no-deps", "-q", "-w", str(wheels), str(src))
    _needs_index("building the wheel", out, python, work)
    (wheel,) = wheels.glob("medexport-*.whl")
    out = _pip(python, "install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    assert out.returncode == 0, out.stderr
    out = _pip(python, "install", "-q", str(wheel))  # the base dependencies (already there on a cached run)
    _needs_index("installing the base dependencies", out, python, work)
    stamp.write_text(key)
    return python


def test_the_base_install_has_no_torch(base_venv):
    script = (
        "import importlib.util as u; print(*[m for m in ('torch', 'onnx', 'onnxscript', 'polygraphy', "
        "'matplotlib') if u.find_spec(m)])"
    )
    out = subprocess.run([str(base_venv), "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    out = _pip(base_venv, "show", "torch")
    assert out.returncode != 0


def test_the_base_install_imports_the_torch_free_runtime(base_venv, tmp_path):
    out = subprocess.run(
        [str(base_venv), "-c", "import medexport.lite"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )  # cwd: not the checkout, so the installed copy is imported
    assert out.returncode == 0, out.stderr


def test_the_base_install_samples_a_bundle_as_pipeline_does(base_venv, tiny_bundle, tmp_path):
    """A plain `pip install medexport` (no torch anywhere) runs a built bundle and makes Pipeline's images."""
    import numpy as np

    from medexport import Pipeline, SampleRequest

    request = SampleRequest([1, 2], seed=4, sampler="ode", method="euler", steps=4, cfg_scale=2.0)
    want = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime", threads=1).run(request).latents.numpy()
    (tmp_path / "request.json").write_text(json.dumps(request.to_dict()))  # the request as a server gets it
    script = (
        "import json, sys\nimport numpy as np\nfrom medexport.lite import LitePipeline, SampleRequest\n"
        "request = SampleRequest.from_dict(json.load(open('request.json')))\n"
        f"result = LitePipeline.from_bundle({str(tiny_bundle)!r}, threads=1).run(request)\n"
        "np.save('got.npy', result.latents)\nassert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([str(base_venv), "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), want)


def test_the_base_install_says_building_needs_the_build_extra(base_venv, tmp_path):
    exe = base_venv.parent / "medexport"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    import medexport.version

    assert out.stdout.strip() == f"medexport, version {medexport.version.__version__}"
    out = subprocess.run([str(exe), "build"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip() == (
        "error: medexport build needs torch, which is not installed: "
        'pip install -e ".[build]" from a medexport checkout'
    )
