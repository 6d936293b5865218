"""Bridges from DecompX to other explainability frameworks.

Each module imports its framework only when it is imported itself, so the core package needs none
of them:

- :mod:`captum_decompx.integrations.inseq`: importing it registers the ``"decompx"`` method with
  inseq (``pip install "captum-decompx[inseq]"``);
- :mod:`captum_decompx.integrations.shap`: DecompX results as ``shap.Explanation`` objects, a text
  plot that keeps its colours under numpy 2, and SHAP's Partition explainer as a Captum
  ``Attribution`` for side-by-side studies (``[shap]``);
- :mod:`captum_decompx.integrations.ferret`: a ferret explainer for its faithfulness benchmark
  (``[ferret]``).
"""
