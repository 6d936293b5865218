"""Dataset-scale runs: text tables in, resumable Parquet parts out, on one process or under
``torchrun`` (``torch.distributed``).

- :mod:`.tables`: reading the data file (CSV, TSV, JSON lines, Parquet) and its columns.
- :mod:`.parts`: the output folder, its parts and their fingerprints.
- :mod:`.jobs`: the one resumable runner both jobs use, with per-job hooks.
- :mod:`.attribute`, :mod:`.evaluate`, :mod:`.generation`: the attribution job (classifiers and
  causal LMs) and the faithfulness job.
- :mod:`.distributed`: process groups, the share of each rank, progress.
"""
