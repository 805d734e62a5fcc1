"""Files from elsewhere (README, "Which files are trusted"): a capture or run folder made by
someone else runs no code and makes fedsim write nowhere but inside the folder it belongs
to; each crafted or missing file gets one line naming it (exit status 2)."""

import json
import os
import shutil

import pytest
import torch

from fedsim.capture import CaptureError
from lab.cli import main as fedsim
from tests.helpers import captured_run
from tests.own_app import TINY, tiny_capture


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def rewrite_header(path, **changes):
    header_path = path.with_suffix(".json")
    header = json.loads(header_path.read_text())
    header.update(changes)
    header_path.write_text(json.dumps(header))


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---- 1. a capture never names code that fedsim runs ----------------------------------

@pytest.mark.parametrize("as_file", [True, False])
def test_a_capture_naming_a_model_factory_runs_no_code(tmp_path, monkeypatch, capsys, as_file):
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "def f():\n"
        f"    open({str(marker)!r}, 'w').write('called')\n")
    monkeypatch.chdir(tmp_path)  # an importable module name works as well as a file
    spec = f"{tmp_path / 'evil.py'}:f" if as_file else "evil:f"
    path, _, _ = tiny_capture(tmp_path / "run")
    header = json.loads(path.with_suffix(".json").read_text())
    header["meta"]["model"] = spec
    header["meta"]["app_facts"]["model"] = spec
    path.with_suffix(".json").write_text(json.dumps(header))

    assert fedsim(["attack", str(path), "--iterations", "2"]) == 2
    err = one_line(capsys)
    assert "--model module:factory" in err and repr(spec) in err and "does not import" in err
    assert not marker.exists()


def test_a_fedsim_capture_names_a_registered_model_only(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.chdir(tmp_path)
    _, path = captured_run(tmp_path)
    header = json.loads(path.with_suffix(".json").read_text())
    header["meta"]["model"] = "evil:f"
    path.with_suffix(".json").write_text(json.dumps(header))
    assert fedsim(["attack", str(path), "--iterations", "2"]) == 2
    assert "the capture's model 'evil:f' is not one of fedsim's models" in one_line(capsys)
    assert not marker.exists()


# ---- 2. header fields that become file names; every file written stays inside ---------

@pytest.mark.parametrize("field, value, named", [
    ("observer", "x/../../../../outside/TRAV", "observer"),
    ("observer", "/tmp/TRAV", "observer"),
    ("observer", "Server", "observer"),
    ("partition_id", "0/../../../outside", "partition_id"),
    ("partition_id", 2**70, "partition_id"),
    ("partition_id", -2, "partition_id"),
    ("round", -1, "round"),
    ("round", True, "round"),
    ("round", "1", "round"),
    ("kind", "../weights", "kind"),
    ("meta", [], "meta"),
])
def test_header_fields_that_become_paths_are_validated(tmp_path, capsys, field, value, named):
    run_dir = tmp_path / "a" / "b" / "run"
    path, x, y = tiny_capture(run_dir)
    torch.save({"images": x, "labels": y}, tmp_path / "originals.pt")
    # what a traversal needs to land outside: the folders it climbs through exist
    (run_dir / "attacks" / "round_001_x").mkdir(parents=True)
    (tmp_path / "a" / "outside").mkdir()  # attacks/round_001_x/../../../../outside
    before = files_under(tmp_path)
    rewrite_header(path, **{field: value})
    assert fedsim(["attack", str(path), "--model", TINY, "--iterations", "2",
                   "--originals", str(tmp_path / "originals.pt")]) == 2
    err = one_line(capsys)
    assert f"{named} {value!r} is not allowed in a capture header" in err
    assert files_under(tmp_path) == before  # nothing written, inside or out


def test_unknown_or_missing_header_keys_get_one_line(tmp_path, capsys):
    path, _, _ = tiny_capture(tmp_path / "run")
    rewrite_header(path, extra="x")
    assert fedsim(["attack", str(path), "--model", TINY]) == 2
    assert "unknown key(s) ['extra'] in the capture header" in one_line(capsys)
    path.with_suffix(".json").write_text(json.dumps({"round": 1}))
    assert fedsim(["attack", str(path), "--model", TINY]) == 2
    assert "missing partition_id, observer, kind, meta" in one_line(capsys)


@pytest.mark.parametrize("fact, value", [("image_shape", [3, 60000, 60000]),
                                         ("image_shape", "3x4x4"), ("num_classes", 1.5)])
def test_declared_facts_that_size_the_attack_are_checked(tmp_path, capsys, fact, value):
    path, _, _ = tiny_capture(tmp_path / "run")
    header = json.loads(path.with_suffix(".json").read_text())
    header["meta"][fact] = value
    path.with_suffix(".json").write_text(json.dumps(header))
    assert fedsim(["attack", str(path), "--model", TINY, "--iterations", "2"]) == 2
    assert f"meta.{fact} {value!r} is not allowed" in one_line(capsys)


def test_a_writer_refuses_an_observer_that_is_not_a_name(tmp_path):
    from fedsim.app_facts import AppFacts
    from fedsim.reply_capture import ReplyCapture

    with pytest.raises(CaptureError, match="observer '../../outside' is not allowed"):
        ReplyCapture(tmp_path / "run", AppFacts(image_shape=(3, 4, 4), num_classes=3),
                     observer="../../outside")
    assert not (tmp_path / "run").exists() and not (tmp_path / "outside").exists()


def test_an_attacks_folder_that_links_outside_is_refused(tmp_path, capsys):
    path, x, y = tiny_capture(tmp_path / "run")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "run" / "attacks")
    assert fedsim(["attack", str(path), "--model", TINY, "--iterations", "2"]) == 2
    assert "leaves" in one_line(capsys)
    assert list((tmp_path / "elsewhere").iterdir()) == []


# ---- 3. and 4. paths and files a run folder's leakage.jsonl names ----------------------

@pytest.fixture
def attacked_run(tmp_path):
    """A run folder with one recorded, scored attack (as `fedsim run` leaves it)."""
    run_dir, path = captured_run(tmp_path)
    assert fedsim(["attack", str(path), "--iterations", "3", "--attack",
                   "inverting_gradients"]) == 0
    assert fedsim(["evaluate", str(run_dir), "--match-on", "ssim"]) == 0  # untampered: fine
    assert fedsim(["report", str(run_dir)]) == 0
    return run_dir


def tamper_row(run_dir, **changes):
    rows = [json.loads(line) for line in (run_dir / "leakage.jsonl").read_text().splitlines()]
    rows[0].update(changes)
    (run_dir / "leakage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows[0]


@pytest.mark.parametrize("key", ["result", "reconstruction", "capture"])
@pytest.mark.parametrize("absolute", [True, False])
def test_rows_pointing_outside_the_run_folder_are_refused(attacked_run, tmp_path, capsys,
                                                          key, absolute):
    row = json.loads((attacked_run / "leakage.jsonl").read_text().splitlines()[0])
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / os.path.basename(row[key])
    shutil.copy(attacked_run / row[key], target)
    if key == "capture":  # a complete capture there, so only the path can be refused
        for name in ("global.pt", "server_client_000.json"):
            shutil.copy(attacked_run / "captures" / "round_001" / name, outside / name)
    kept = {p.name: p.read_bytes() for p in outside.iterdir()}
    tamper_row(attacked_run, **{key: str(target) if absolute else f"../outside/{target.name}"})
    capsys.readouterr()
    for command in (["evaluate", str(attacked_run), "--match-on", "ssim"],
                    ["report", str(attacked_run)]):
        assert fedsim(command) == 2
        err = one_line(capsys)
        assert f"{key!r} of the round 1 attack" in err and "leaves" in err
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == kept


def test_a_crafted_attack_file_gets_one_line_and_runs_nothing(attacked_run, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    row = json.loads((attacked_run / "leakage.jsonl").read_text().splitlines()[0])
    torch.save({"images": Exploit()}, attacked_run / row["reconstruction"])
    capsys.readouterr()
    for command in (["evaluate", str(attacked_run), "--match-on", "ssim"],
                    ["report", str(attacked_run)]):
        assert fedsim(command) == 2
        err = one_line(capsys)
        assert row["reconstruction"] in err and "not a readable attack reconstruction" in err
    assert not marker.exists()


@pytest.mark.parametrize("key, says", [("reconstruction", "no such attack reconstruction"),
                                       ("result", "not a readable attack result")])
def test_a_missing_attack_file_gets_one_line(attacked_run, capsys, key, says):
    row = json.loads((attacked_run / "leakage.jsonl").read_text().splitlines()[0])
    (attacked_run / row[key]).unlink()
    before = (attacked_run / "leakage.jsonl").read_text()
    capsys.readouterr()
    for command in (["evaluate", str(attacked_run), "--match-on", "ssim"],
                    ["report", str(attacked_run)]):
        assert fedsim(command) == 2
        err = one_line(capsys)
        assert row[key] in err and says in err
    assert (attacked_run / "leakage.jsonl").read_text() == before  # nothing rewritten
