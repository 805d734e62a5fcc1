"""Threat models: what each observer records, checked against the others and against the
clients' own updates."""

import torch

from fedsim.capture import load_capture, round_dir
from fedsim.records import read_rows
from lab.orchestration.attacks import attack_run
from lab.orchestration.simulation import run_experiment, run_simulation
from tests.helpers import tiny_config


def _close(a: dict, b: dict, atol=1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol)
                                        for k in a)


def test_fedsgd_observers_and_a_failed_attack(tmp_path):
    """Without secure aggregation the eavesdropper records exactly what the server
    receives; the honest-but-curious client's target is the difference of two consecutive
    global models (over the server's lr), which is the mean of the clients' gradients.
    Every scheduled (round, client, observer) gets a leakage row with its round's
    accuracy, and an attack that fails is recorded while the others finish."""
    cfg = tiny_config(tmp_path, federation={"num_rounds": 2, "algorithm": "fedsgd",
                                            "batch_size": 2},
                      attack={"enabled": True, "when": "after",
                              "observers": ["server", "eavesdropper", "client"],
                              "rounds": "all", "clients": "all", "iterations": 5})
    result = run_simulation(cfg)
    run_dir = result.run_dir
    for rnd in (1, 2):
        for pid in (0, 1):
            server = load_capture(round_dir(run_dir, rnd) / f"server_client_{pid:03d}.pt")
            wire = load_capture(round_dir(run_dir, rnd) / f"eavesdropper_client_{pid:03d}.pt")
            assert _close(server.update, wire.update, atol=0)
            assert _close(server.weights_before, wire.weights_before, atol=0)
    seen = load_capture(round_dir(run_dir, 1) / "client_aggregate.pt")
    g0 = load_capture(round_dir(run_dir, 1) / "server_client_000.pt").update
    g1 = load_capture(round_dir(run_dir, 1) / "server_client_001.pt").update
    assert _close(seen.update, {k: (g0[k] + g1[k]) / 2 for k in g0})
    after = torch.load(round_dir(run_dir, 2) / "global.pt", weights_only=True)
    assert _close(seen.update, {k: (seen.weights_before[k] - after[k]) / cfg.federation.lr
                                for k in g0})
    assert not (round_dir(run_dir, 2) / "client_aggregate.pt").exists()  # never sees round 3

    broken = round_dir(run_dir, 2) / "server_client_001.pt"
    broken.write_bytes(broken.read_bytes()[:30])
    rows = attack_run(cfg, run_dir, progress=False)
    keys = sorted((r["observer"], r["round"], r["partition_id"]) for r in rows)
    assert keys == sorted([(o, r, p) for o in ("server", "eavesdropper") for r in (1, 2)
                           for p in (0, 1)] + [("client", 1, -1)])
    failed = [r for r in rows if "error" in r]
    assert [(r["observer"], r["round"], r["partition_id"]) for r in failed] == [("server", 2, 1)]
    assert all("psnr" in r for r in rows if "error" not in r)


def test_fedavg_client_observer_sees_the_weighted_mean_of_the_updates(tmp_path):
    cfg = tiny_config(tmp_path, federation={"num_rounds": 2, "local_steps": 2},
                      attack={"observers": ["client"]})
    run_dir = run_simulation(cfg).run_dir
    seen = load_capture(round_dir(run_dir, 1) / "client_aggregate.pt")
    caps = [load_capture(round_dir(run_dir, 1) / f"server_client_{p:03d}.pt") for p in (0, 1)]
    n = [c.facts.client_metrics["num-examples"] for c in caps]
    mean = {k: sum(w * c.update[k].float() for w, c in zip(n, caps)) / sum(n)
            for k in caps[0].update}
    assert _close({k: v.float() for k, v in seen.update.items()}, mean, atol=1e-5)


def test_secure_aggregation_leaves_the_eavesdropper_masked_shares(tmp_path):
    cfg = tiny_config(tmp_path, federation={"num_clients": 3, "num_rounds": 1,
                                            "local_steps": 1},
                      defenses=[{"name": "secagg_plus"}],
                      attack={"enabled": True, "when": "after", "name": "fedavg_naive",
                              "observers": ["server", "eavesdropper"], "clients": "all",
                              "iterations": 3})
    result = run_experiment(cfg, progress=False)
    folder = round_dir(result.run_dir, 1)
    assert (folder / "server_aggregate.pt").is_file()
    assert not list(folder.glob("server_client_*.pt"))
    headers = sorted(folder.glob("eavesdropper_client_*.json"))
    assert len(headers) == 3 and not list(folder.glob("eavesdropper_client_*.pt"))
    assert all('"masked"' in h.read_text() for h in headers)
    rows = read_rows(result.run_dir / "leakage.jsonl")
    assert [(r["observer"], r["partition_id"]) for r in rows] == [("server", -1)]


def test_attacks_during_training_cover_every_scheduled_update(tmp_path):
    """`when = "during"`: Ray tasks invert each capture as it lands; the run finishes with
    one leakage row per scheduled (round, client, observer), each with its round's
    accuracy in leakage.csv."""
    import csv

    cfg = tiny_config(tmp_path, federation={"num_rounds": 3, "algorithm": "fedsgd",
                                            "batch_size": 1},
                      attack={"enabled": True, "when": "during",
                              "observers": ["server", "client"], "rounds": "all",
                              "clients": "all", "iterations": 10})
    result = run_experiment(cfg, progress=False)
    keys = sorted((r["observer"], r["round"], r["partition_id"]) for r in result.attacks)
    assert keys == sorted([("server", r, p) for r in (1, 2, 3) for p in (0, 1)]
                          + [("client", 1, -1), ("client", 2, -1)])
    table = list(csv.DictReader((result.run_dir / "leakage.csv").read_text().splitlines()))
    assert len(table) == 8 and all(row["round_global_accuracy"] for row in table)
    assert all(r["engine"] and r["seconds"] > 0 for r in result.attacks)
