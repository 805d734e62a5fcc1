"""One owner for a run folder's names (fedsim.run_folder): the layout its docstring draws."""

from fedsim.run_folder import RunFolder, attack_stem, capture_stem


def test_the_names():
    run = RunFolder("/r")
    assert RunFolder(run).root == run.root  # a RunFolder or a path, the same folder
    assert run.capture(3, "server", 7).as_posix() == "/r/captures/round_003/server_client_007.pt"
    assert capture_stem("client", -1) == "client_aggregate"
    assert attack_stem(1, "eavesdropper", 0, "dlg") == "round_001_eavesdropper_client_000_dlg"
    assert {p.name for p in (run.config, run.metrics, run.leakage, run.lock)} == {
        "config.toml", "metrics.jsonl", "leakage.jsonl", "run.lock"}
