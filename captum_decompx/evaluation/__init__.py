"""The DecompX paper's faithfulness protocol and ERASER's metrics, for any Captum attribution method.

For each example the non-special tokens are ranked by their attribution to the *predicted* class
``y_hat`` and some of them are replaced with the tokenizer's mask token. Each metric is one
:class:`FaithfulnessMetric` object; the defaults (:func:`default_metrics`) are:

- :class:`AOPC`: ``floor(K * n)`` tokens (``n`` = number of non-special tokens) masked for
  ``K in {0.0, 0.1, ..., 0.9}``, once starting from the most and once from the least important;
  AOPC = mean over K and examples of ``p(y_hat | x) - p(y_hat | x_K)``;
- :class:`MaskedAccuracy`: the accuracy of those masked inputs against the gold labels, per K;
- :class:`KeepTopAccuracy`: the accuracy when only the top 20% (single sentences) or 40% (sentence
  pairs) of the non-special tokens are kept and the others masked (the paper's prediction
  performance);
- :class:`Comprehensiveness` and :class:`Sufficiency`: ERASER's metrics (DeYoung et al., 2020) as
  ferret reports them (``aopc_compr``, ``aopc_suff``): for ``k in {10%, ..., 100%}`` the rationale is
  the top ``floor(k * n)`` tokens that have a positive score; comprehensiveness is
  ``p(y_hat | x) - p(y_hat | x without the rationale)`` and sufficiency is
  ``p(y_hat | x) - p(y_hat | the rationale only)``, each averaged over the distinct non-empty
  rationales of the example, then over examples. Higher comprehensiveness and lower sufficiency are
  better.

Masking the most important tokens, higher AOPC and lower accuracy are better; masking the least
important, the reverse.

How ours relates to ferret's (``ferret.evaluators.faithfulness_measures``, 0.4.1): the thresholds,
``floor``, the positive-score filter (ferret's ``only_pos=True``), skipping a threshold whose
rationale equals the previous one, and the values for an example without any rationale
(comprehensiveness 0, sufficiency 1) are ferret's. Differences: removed tokens are replaced with the
mask token in place (ferret's default deletes them and re-tokenizes the decoded text); the class is
the predicted one (ferret takes a ``target``); all special tokens are excluded from ranking (ferret
drops the first and the last token only); ties are broken by position, earlier first (ferret's
``argsort`` leaves their order unspecified).

Example::

    forward = classifier_forward(model)
    embeddings = model.get_input_embeddings()
    result = evaluate_faithfulness(
        model, tokenizer, texts, labels,
        methods={
            "DecompX": MethodSpec(DecompX(model)),
            "IG (L2)": MethodSpec(
                LayerIntegratedGradients(forward, embeddings),
                reduce=l2_over_embedding,
                baselines=reference_baselines(tokenizer),
                attribute_kwargs={"n_steps": 50},
            ),
            "random": random_method(),
        },
    )
    print(result)                  # a markdown table
    result.plot("curves.png")      # AOPC and accuracy against K

Per-example rows and aggregation (for sharded or resumable runs): :func:`evaluate_faithfulness` is
built on three public steps, which a distributed run can call itself::

    metrics = default_metrics(pairs=False)
    batch = encode_examples(tokenizer, texts[i:j], labels[i:j])
    rows = example_rows(model, batch, {"DecompX": spec}, metrics,
                        mask_token_id=tokenizer.mask_token_id, example_ids=range(i, j))
    # ... write rows anywhere (one dict per example and method; values are str, int, float or
    # lists of floats: pyarrow.Table.from_pylist(rows) works), read all parts back ...
    result = aggregate_rows(all_rows, metrics)   # the same FaithfulnessResult

Each row has ``method``, ``example`` (the id given), ``label``, ``predicted``, ``p_predicted``,
``seconds`` (this example's share of its batch's attribution time) and the columns of every metric
(:attr:`FaithfulnessMetric.columns`). :func:`aggregate_rows` accepts the rows of any number of parts
in any order, refuses duplicates and methods evaluated on different examples, and returns
per-example arrays in the order of the example ids.

In this package *method* always means an attribution method (DecompX, Integrated Gradients, ...);
DecompX's own exact/fast choice is called its algorithm. Attribution methods can also be built by
key from a registry (:func:`build_methods`,
:func:`register_method`, :data:`METHOD_REGISTRY`), as a command line does.

The package, by concern: :mod:`.encoding` (tokenized batches), :mod:`.methods` (method
specifications, reductions and the method registry), :mod:`.metrics` (masking and the metric
objects), :mod:`.protocol` (per-example rows and :func:`evaluate_faithfulness`), :mod:`.results`
(result classes and :func:`aggregate_rows`) and :mod:`.plots` (the curves). Every public name is
importable from ``captum_decompx.evaluation`` itself.
"""

from .encoding import Batch, encode_examples
from .encoding import Example as Example  # a type alias, public but not in __all__
from .methods import (
    METHOD_REGISTRY,
    MethodContext,
    MethodSpec,
    RandomAttribution,
    RegisteredMethod,
    build_methods,
    classifier_forward,
    identity,
    l2_over_embedding,
    paper_methods,
    random_method,
    reference_baselines,
    register_method,
    sum_over_embedding,
    unregister_method,
)
from .methods import Reduce as Reduce  # a type alias, public but not in __all__
from .metrics import (
    AOPC,
    DEFAULT_FRACTIONS,
    ERASER_FRACTIONS,
    Comprehensiveness,
    FaithfulnessMetric,
    KeepTopAccuracy,
    MaskedAccuracy,
    MaskedPredictions,
    Sufficiency,
    default_metrics,
    importance_ranks,
    mask_ranked_tokens,
    masked_counts,
    top_rationale,
)
from .metrics import KEEP_FRACTION_PAIRS as KEEP_FRACTION_PAIRS
from .metrics import KEEP_FRACTION_SINGLE as KEEP_FRACTION_SINGLE
from .protocol import evaluate_faithfulness, example_rows
from .results import ROW_KEYS, FaithfulnessResult, MethodResult, aggregate_rows

__all__ = [
    "AOPC",
    "DEFAULT_FRACTIONS",
    "ERASER_FRACTIONS",
    "METHOD_REGISTRY",
    "ROW_KEYS",
    "Batch",
    "Comprehensiveness",
    "FaithfulnessMetric",
    "FaithfulnessResult",
    "KeepTopAccuracy",
    "MaskedAccuracy",
    "MaskedPredictions",
    "MethodContext",
    "MethodResult",
    "MethodSpec",
    "RandomAttribution",
    "RegisteredMethod",
    "Sufficiency",
    "aggregate_rows",
    "build_methods",
    "classifier_forward",
    "default_metrics",
    "encode_examples",
    "evaluate_faithfulness",
    "example_rows",
    "identity",
    "importance_ranks",
    "l2_over_embedding",
    "mask_ranked_tokens",
    "masked_counts",
    "paper_methods",
    "random_method",
    "reference_baselines",
    "register_method",
    "unregister_method",
    "sum_over_embedding",
    "top_rationale",
]
