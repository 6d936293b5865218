"""Builders, constants and small checks shared by several test files (fixtures are in ``conftest.py``).

- :mod:`.classifiers`: tiny random BERT-like classifiers, padded batches, a WordPiece tokenizer.
- :mod:`.architectures`: tiny configurations of every supported family.
- :mod:`.literal_models`: tiny models for the literal-spec tests and readers of their weights.
- :mod:`.snapshots`: what a call must leave unchanged on a model, and the comparison.
- :mod:`.product_spy`: the dtype and device of every matrix product outside the forward function.
- :mod:`.word_level`: the word-level tokenizer of the tiny causal LMs.
- :mod:`.cli_output`: running the command line in-process and parsing what it prints.
- :mod:`.notebooks`: executing the tutorials and reading their outputs.
- :mod:`.smollm`: whether the demo LLM (SmolLM2-135M-Instruct) is installed, its question, a scaled comparison.
"""
