"""The deprecation guard itself: pysteer must call no deprecated API, and the suite is what
enforces it, so check that the guard is armed (a guard that silently stopped working would
let every other test pass)."""

from __future__ import annotations

import logging
import warnings

import pytest

import conftest


def test_deprecation_warnings_are_errors_in_this_suite():
    """pyproject's filterwarnings turns them into errors for every test."""
    with pytest.raises(FutureWarning):
        warnings.warn("`past_key_values` is deprecated and will be removed", FutureWarning)
    with pytest.raises(DeprecationWarning):
        warnings.warn("an old API", DeprecationWarning)


def test_the_one_third_party_import_warning_we_ignore_is_only_that_one():
    warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`.", DeprecationWarning)
    with pytest.raises(DeprecationWarning):
        warnings.warn("`torch.jit.trace` is deprecated.", DeprecationWarning)


def test_deprecations_transformers_only_logs_are_caught():
    """transformers reports some deprecations through ``logger.warning_once``; the conftest
    handler records them, and its autouse fixture fails the test that logged one."""
    before = len(conftest._deprecations.messages)
    logging.getLogger("transformers.utils.generic").warning(
        "`past_key_values`/`cache_params` are deprecated. Use `cache` instead.")
    logging.getLogger("transformers.modeling_utils").warning("Loading weights took 1 s")  # not a deprecation
    assert conftest._deprecations.messages[before:] == [
        "`past_key_values`/`cache_params` are deprecated. Use `cache` instead."]
    del conftest._deprecations.messages[before:]  # this test logged it on purpose
