"""docker-compose.yml run for real: a Docker daemon the module starts (lab/dockerd.py; its
images in ~/.cache/fedsim/docker, built once by `fedsim images build`, here if missing),
and the compose file brought up unchanged (lab/stack.py) for experiments/deploy.toml, cut
to 2 rounds and a short attack:

1. insecure, the wire eavesdropper in the path: both rounds run, the attacker worker
   inverts the server's and the wire's captures of round 1 in the shared volume, the wire's
   equal the server's, the report is in the results volume, and SuperNode 1's container,
   stopped after round 1, is counted as a client failure of round 2 (as in the process
   topology, tests/test_deploy.py);
2. TLS (`fedsim certs`), the eavesdropper in the path: both rounds run, the proxy decodes
   nothing, the attacker inverts the server's captures, the report is there.

Each stack's containers, networks and volumes are removed by id (checked), and the daemon
is stopped. Opt-in (FEDSIM_DOCKER_TESTS=1); skipped, with the reason, where dockerd or
compose is not installed.
"""

import pytest

from lab.dockerd import compose_command, unavailable_reason


def _reason() -> str:
    import os

    if os.environ.get("FEDSIM_DOCKER_TESTS") != "1":
        # measured here (2 shared cores): about 24 minutes for the two stacks after a first
        # image build of 15-20 minutes, beyond the suite's 10; and the TLS stack stalls on
        # a starved machine (README, Known issues). Opt in where that time is there.
        return ("the compose stacks take ~24 min here: set FEDSIM_DOCKER_TESTS=1 "
                "(and have dockerd, docker-compose, debootstrap) to run them")
    reason = unavailable_reason()
    if not reason and compose_command() is None:
        reason = "no docker compose (apt-get install docker-compose)"
    return reason


REASON = _reason()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "Docker runs here")


@pytest.fixture(scope="module")
def docker_env():
    from lab.dockerd import DEFAULT_ROOT, own_daemon
    from lab.images import build_all

    with own_daemon(DEFAULT_ROOT) as env:
        build_all(env=env, log=lambda line: None)  # a no-op where they are built
        yield env


def _experiment(tmp_path):
    from fedsim.config import from_dict, load
    from lab.images import ROOT

    base = load(ROOT / "experiments" / "deploy.toml").model_dump(mode="json")
    base["federation"].update(num_rounds=2, local_steps=1, connect_timeout_s=5.0)
    base["attack"].update(iterations=40)
    base["output_dir"] = str(tmp_path / "runs")
    return from_dict(base)


def _stop_node_after_round_1(stack) -> bool:
    """Waits for round 1 in the results volume, then stops SuperNode 1's container."""
    import json
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        lines = stack.read("attacker", "/results/run/metrics.jsonl").splitlines()
        if any(json.loads(ln).get("round") == 1 for ln in lines if ln.strip().endswith("}")):
            stack.stop("supernode-1")
            return True
        time.sleep(1)
    return False


def _gone(env, made: dict) -> list[str]:
    import subprocess

    sub = {"containers": "container", "networks": "network", "volumes": "volume"}
    return [i for kind, ids in made.items() for i in ids
            if subprocess.run(["docker", sub[kind], "inspect", i], env=env,
                              capture_output=True).returncode == 0]


def test_insecure_stack_with_the_wire_and_a_supernode_stopped(docker_env, tmp_path):
    import torch

    from fedsim.capture import load_capture, round_dir
    from fedsim.records import read_rows
    from lab.stack import run_stack

    cfg = _experiment(tmp_path)
    stopped = {}

    def during(stack):
        stopped["node"] = _stop_node_after_round_1(stack)

    run = run_stack(cfg, compose_command(), tmp_path / "stack", docker_env, wire=True,
                    during=during, timeout_s=900)
    assert stopped["node"], "round 1 never reached the results volume"
    rows = read_rows(run.results / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["clients"] == 2 and rows[1]["failures"] == 0
    assert rows[2]["clients"] == 1 and rows[2]["failures"] == 1, rows[2]
    assert (run.results / "report.html").is_file() and (run.results / "rounds.csv").is_file()
    attacks = read_rows(run.results / "leakage.jsonl")
    assert sorted((a["observer"], a["partition_id"]) for a in attacks) == [
        ("server", 0), ("server", 1), ("wire", 0), ("wire", 1)]
    assert all("psnr" in a for a in attacks), attacks
    scores = {(a["observer"], a["partition_id"]): a["psnr"] for a in attacks}
    assert scores[("wire", 0)] == scores[("server", 0)]
    assert run.wire["captures"] == 2 and run.wire["tls_connections"] == 0
    folder = round_dir(run.results, 1)
    wire = load_capture(folder / "wire_client_000.pt")
    server = load_capture(folder / "server_client_000.pt")
    assert all(torch.equal(wire.update[k], server.update[k]) for k in server.update)
    assert run.made["containers"] and run.made["networks"] and run.made["volumes"]
    assert not _gone(docker_env, run.made)


def test_tls_stack_with_the_wire_decodes_nothing(docker_env, tmp_path):
    from fedsim.capture import round_dir
    from fedsim.records import read_rows
    from lab.stack import run_stack

    cfg = _experiment(tmp_path)
    run = run_stack(cfg, compose_command(), tmp_path / "stack", docker_env, tls=True,
                    wire=True, timeout_s=900)
    rows = read_rows(run.results / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["failures"] == 0 for r in rows[1:]), rows
    assert (run.results / "report.html").is_file()
    assert len(list(round_dir(run.results, 1).glob("server_client_*.pt"))) == 2
    assert not list(round_dir(run.results, 1).glob("wire_*"))
    assert run.wire["tls_connections"] > 0 and run.wire["captures"] == 0
    assert "nothing decodable" in run.wire["note"]
    attacks = read_rows(run.results / "leakage.jsonl")
    assert sorted(a["partition_id"] for a in attacks if a["observer"] == "server") == [0, 1]
    assert not _gone(docker_env, run.made)
