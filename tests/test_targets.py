"""Scheduled attacks without a capture are said in a few lines, however many there are."""

import logging

from lab.orchestration.attacks import MISSING_SHOWN, _report_missing


def test_missing_captures_are_a_few_lines_and_unsampled_clients_one(caplog):
    """A 100-client federation sampling 10 a round misses 90 scheduled captures a round
    by design: one line. Otherwise the first few are named and the rest counted (the
    thousands of lines before filled a reader's pipe and stalled the run)."""
    missing = [("server", r, c) for r in range(1, 21) for c in range(90)]
    with caplog.at_level(logging.INFO, logger="fedsim"):
        _report_missing(missing, sampled=True)
    assert len(caplog.records) == 1 and "1800 scheduled" in caplog.records[0].message
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fedsim"):
        _report_missing(missing[:8], sampled=False)
    lines = [r.message for r in caplog.records]
    assert len(lines) == MISSING_SHOWN + 1 and "3 more" in lines[-1]
    assert lines[0] == "no server capture for round 1 client 0 (capture.rounds?)"
