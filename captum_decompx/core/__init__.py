"""The engine: one pass over the model that records (exact path) or freezes (fast path), the
decomposition, and the Captum-facing plumbing every attribution method here shares.

- :mod:`.capture`, :mod:`.recording`, :mod:`.freezing`: the hooks of one forward pass, installed and
  removed together; what each component kind records, how it freezes.
- :mod:`.decomposition`, :mod:`.rows`: the exact propagation of the pieces and the fast path's
  backward pass; chosen rows of a causal model at once.
- :mod:`.algorithms`: the strategies ``Exact`` and ``Fast``, chosen once per ``DecompX``.
- :mod:`.forward_contract`: what the forward function does with the model's output.
- :mod:`.hooked_attribution`: the Captum base class of DecompX, GlobEnc and ALTI.
- :mod:`.memory`, :mod:`.validation`: memory plans, argument and model checks.
"""
