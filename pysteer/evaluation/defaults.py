"""The evaluation's default constants, importable without torch (the CLI's help shows them).

- ``DEFAULT_PPL_REF``: the perplexity at or below which a response counts as fully fluent in OQ
  (:mod:`pysteer.evaluation.metrics`);
- ``DEFAULT_WEIGHTS``: the tuner's reward ``w_ifr·IFR_loose + w_rr·RR + w_oq·OQ``.
"""

DEFAULT_PPL_REF = 20.0
DEFAULT_WEIGHTS = {"ifr": 1.0, "rr": 0.5, "oq": 0.5}
