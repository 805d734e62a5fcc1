"""A capture's facts are one typed record (fedsim.capture_facts.CaptureFacts): every
observer builds it the same way, every attack reads it, and the header carries its
version, so a run folder from before the record loads and one from a newer fedsim is
refused in one line."""

import json

import pytest
import torch

from fedsim.capture import CaptureError, load_capture, save_capture
from fedsim.capture_facts import FACTS_VERSION, CaptureFacts, FactsFormatError, build
from tests.helpers import captured_run
from tests.own_app import tiny_capture


def _header(path):
    return json.loads(path.with_suffix(".json").read_text())


def _rewrite(path, header):
    path.with_suffix(".json").write_text(json.dumps(header))


def test_both_writers_build_the_same_record_and_it_round_trips(tmp_path):
    (tmp_path / "a").mkdir()
    _, fedsim_path = captured_run(tmp_path / "a")        # fedsim's experiment facts
    foreign_path, _, _ = tiny_capture(tmp_path / "b")   # your own app's AppFacts
    for path in (fedsim_path, foreign_path):
        header = _header(path)
        assert header["meta"]["facts_version"] == FACTS_VERSION
        cap = load_capture(path)
        assert isinstance(cap.facts, CaptureFacts)
        again = save_capture(tmp_path / "again" / path.parts[-5], cap)
        assert load_capture(again).facts == cap.facts
    assert load_capture(fedsim_path).facts.app == "fedsim"
    assert load_capture(foreign_path).facts.app == "foreign"


def test_a_header_from_before_the_record_loads_as_version_0(tmp_path):
    path, _, _ = tiny_capture(tmp_path / "run")
    header = _header(path)
    meta = header["meta"]
    meta.pop("facts_version")
    meta["facts"] = meta.pop("app_facts")   # the declared AppFacts' old name
    meta["retired_key"] = 1                 # a fact no reader knows any more
    _rewrite(path, header)
    cap = load_capture(path)
    assert cap.facts.facts_version == FACTS_VERSION
    assert cap.facts.app_facts["num_classes"] == 3 and cap.facts.lr == 0.1


def test_a_newer_version_and_an_unknown_fact_are_refused_in_one_line(tmp_path):
    path, _, _ = tiny_capture(tmp_path / "run")
    header = _header(path)
    header["meta"]["facts_version"] = FACTS_VERSION + 1
    _rewrite(path, header)
    with pytest.raises(CaptureError, match="written by a newer fedsim"):
        load_capture(path)
    header["meta"]["facts_version"] = FACTS_VERSION
    header["meta"]["retired_key"] = 1
    _rewrite(path, header)
    with pytest.raises(CaptureError, match="unknown fact meta.retired_key"):
        load_capture(path)


@pytest.mark.parametrize("fields, says", [
    ({"num_classes": 3}, "meta.image_shape is missing"),
    ({"image_shape": [1, 8, 8], "num_classes": 3, "lr": "fast"}, "meta.lr 'fast'"),
    ({"image_shape": [1, 8, 8], "num_classes": 3, "keyed_by": "x"}, "meta.keyed_by 'x'"),
    ({"image_shape": [1, 8, 8], "num_classes": 3, "weights_sha256": "ab"},
     "meta.weights_sha256 'ab'"),
])
def test_each_bad_fact_is_named(fields, says):
    with pytest.raises(FactsFormatError, match=says):
        build(fields)


def test_with_validates_the_change():
    facts = build({"image_shape": [1, 8, 8], "num_classes": 3})
    assert facts.with_(batch_sizes=[2, 2]).batch_sizes == (2, 2)
    with pytest.raises(FactsFormatError, match="meta.batch_sizes"):
        facts.with_(batch_sizes=["two"])
    with pytest.raises(Exception):
        facts.lr = 1.0  # frozen: a change is a new, validated record
    assert torch.Size(facts.image_shape) == torch.Size([1, 8, 8])
