"""Sphinx configuration of the captum-decompx documentation.

Build (warnings are errors, every broken internal link fails the build):
    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

The stored tutorials (``tutorials/*.ipynb``, linked here as ``docs/tutorials``) are rendered by
myst-nb with the outputs they were saved with; nothing is executed at build time.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # autodoc imports the checkout's captum_decompx
os.environ.setdefault("HF_HUB_OFFLINE", "1")

project = "captum-decompx"
author = "captum-decompx"
copyright = "2026, captum-decompx"
release = installed_version("captum-decompx")
version = release

extensions = [
    "myst_nb",  # Markdown pages (MyST) and the stored notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# .rst first: autosummary writes its generated pages with the first suffix.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
templates_path = ["_templates"]
autosummary_ignore_module_all = False
exclude_patterns = ["_build", "images", "_templates", "tutorials/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# Notebooks are shown as stored (executed by scripts/execute_tutorials.py and checked by the tests).
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
# The included benchmark reports start at '#' and skip levels in places; they are generated files.
suppress_warnings = ["myst.header"]

# API reference: autosummary over the public names of captum_decompx (docs/api.md).
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" sections as fields: a dataclass field is then described once

# The top-level package re-exports classes of its sub-packages: their pages under a sub-package are
# written with :no-index: (templates/public-class.rst), so each class has one target to link to.
autosummary_context = {"top_level_names": sorted(__import__("captum_decompx").__all__)}

html_theme = "furo"
html_title = f"captum-decompx {release}"
html_static_path: list[str] = []
