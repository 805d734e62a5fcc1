"""The deployment (docker-compose.yml), verified without Docker:

1. every service's command flags exist in the installed Flower (or fedsim) command's
   --help, for every env file and profile, and the images follow the pinned flwr version;
2. the same topology runs as local processes on loopback (SuperLink, 2 SuperNodes,
   SuperExecs, the wire proxy), the run completes with its report, and the proxy's captures
   equal the server's and score the same;
3. under TLS the run completes and the proxy decodes nothing;
4. a certificate that cannot be loaded ends with one line naming the SuperLink, not a hang;
5. a Docker engine, when one can run here, brings the stack up for real.
Every process a test starts is stopped by it (lab.deploy.LocalTopology).
"""

import functools
import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fedsim.capture import load_capture, round_dir
from lab.deploy import DeployError, deploy_local, load_compose, read_env_file
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_FILES = [None, *sorted((ROOT / "deploy").glob("*.env"))]


@functools.lru_cache(maxsize=None)
def _help(executable: str, sub: str = "") -> str:
    if executable == "fedsim":
        from lab.cli import build_parser

        parser = build_parser()
        action = next(a for a in parser._actions if a.dest == "command")
        return action.choices[sub].format_help()
    exe = shutil.which(executable) or str(Path(__import__("sys").executable).parent / executable)
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name if p else "insecure")
def test_every_compose_flag_exists_in_the_installed_commands(env_file):
    services = load_compose(COMPOSE, read_env_file(env_file), ("cpu", "gpu", "wire"))
    assert {"superlink", "supernode-0", "supernode-1", "serverapp", "clientapp-0",
            "clientapp-1", "attacker", "attacker-gpu", "eavesdropper"} <= set(services)
    for svc in services.values():
        sub = svc.args[0] if svc.executable == "fedsim" else ""
        text = _help(svc.executable, sub)
        flags = [a.split("=")[0] for a in svc.args if a.startswith("--")]
        missing = [f for f in flags if not re.search(rf"{re.escape(f)}\b", text)]
        assert not missing, f"{svc.name}: {missing} not in `{svc.executable} {sub} --help`"


def test_images_follow_the_pinned_flower_version():
    import yaml

    version = importlib.metadata.version("flwr")
    spec = yaml.safe_load(COMPOSE.read_text())["services"]
    tags = {name: s["image"] for name, s in spec.items() if str(s.get("image", "")).startswith("flwr/")}
    assert tags and all(t.endswith(f":{version}") for t in tags.values()), tags
    assert all(s.get("build") == "." for n, s in spec.items() if n.startswith(("serverapp", "clientapp")))
    assert 'ENTRYPOINT ["flower-superexec"]' in (ROOT / "Dockerfile").read_text()


def _experiment(tmp_path, observers=("server", "wire"), attack=True):
    return tiny_config(
        tmp_path, federation={"num_clients": 2, "num_rounds": 2, "algorithm": "fedavg",
                              "local_steps": 1, "batch_size": 4, "lr": 0.5},
        capture={"rounds": [1]},
        attack={"enabled": attack, "name": "fedavg_replay", "observers": list(observers),
                "clients": "all", "iterations": 60, "tv_weight": 0.0, "signed": True,
                "lr": 0.3, "knowledge": {"labels": "known"}})


def _finish(cfg, run_dir):
    """Tables and report of a deployed run; the attacker worker's records."""
    from fedsim.records import read_rows
    from lab.orchestration.simulation import _finish_files
    from lab.report import build_report

    rows = _finish_files(run_dir)
    build_report(run_dir)
    return rows, read_rows(run_dir / "leakage.jsonl")


def test_the_topology_runs_as_local_processes_with_the_wire_proxy(tmp_path):
    from lab.orchestration.simulation import prepare_run_dir

    cfg = _experiment(tmp_path)
    run_dir = prepare_run_dir(cfg, tmp_path / "run")
    dep = deploy_local(cfg, run_dir, wire=True, timeout_s=400)
    rows, attacks = _finish(cfg, run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert (run_dir / "report.html").is_file()
    assert dep.wire["captures"] == 2 and dep.wire["tls_connections"] == 0
    folder = round_dir(run_dir, 1)
    for pid in (0, 1):
        wire = load_capture(folder / f"wire_client_{pid:03d}.pt")
        server = load_capture(folder / f"server_client_{pid:03d}.pt")
        assert all(torch.equal(wire.update[k], server.update[k]) for k in server.update)
        assert all(torch.equal(wire.weights_before[k], server.weights_before[k])
                   for k in server.weights_before)
    scores = {(a["observer"], a["partition_id"]): a["psnr"] for a in attacks}
    assert scores[("wire", 0)] == scores[("server", 0)] and len(scores) == 4
    assert "attack on round 1 client 0 by the wire" in (dep.folder / "attacker.log").read_text()

    # the same experiment on the simulation engine sent and received the same tensors
    from lab.orchestration.simulation import run_simulation

    sim = run_simulation(cfg, run_dir=tmp_path / "sim").run_dir
    simulated = load_capture(round_dir(sim, 1) / "server_client_000.pt")
    deployed = load_capture(folder / "wire_client_000.pt")
    assert all(torch.equal(simulated.update[k], deployed.update[k]) for k in deployed.update)


def test_under_tls_the_run_completes_and_the_proxy_decodes_nothing(tmp_path):
    """TLS with SuperNode authentication (deploy/auth.env: node keys registered with the
    SuperLink before the nodes start) and the proxy in the path."""
    from lab.orchestration.simulation import prepare_run_dir

    cfg = _experiment(tmp_path, observers=("server",), attack=False)
    run_dir = prepare_run_dir(cfg, tmp_path / "run")
    dep = deploy_local(cfg, run_dir, env_file=ROOT / "deploy" / "auth.env", wire=True,
                       timeout_s=400)
    assert (dep.folder / "superlink.log").read_text().count("RegisterNode] Created") == 2
    rows, _ = _finish(cfg, run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert len(list(round_dir(run_dir, 1).glob("server_client_*.pt"))) == 2
    assert dep.wire["tls_connections"] > 0
    assert dep.wire["captures"] == 0 and dep.wire["http_exchanges"] == 0
    assert "nothing decodable" in dep.wire["note"]
    assert not list(round_dir(run_dir, 1).glob("wire_*"))


def test_a_bad_certificate_ends_with_one_line_not_a_hang(tmp_path):
    from lab.orchestration.simulation import prepare_run_dir

    cfg = _experiment(tmp_path, observers=("server",))
    run_dir = prepare_run_dir(cfg, tmp_path / "run")
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.pem", "server.pem", "server.key"):
        (certs / name).write_text("not a certificate\n")
    with pytest.raises(DeployError, match="superlink exited with status"):
        deploy_local(cfg, run_dir, env_file=ROOT / "deploy" / "tls.env", certs=certs,
                     timeout_s=120)


def _docker_runs() -> str:
    if shutil.which("docker") is None:
        return "no docker command (Debian's docker.io) on this machine"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    return "" if done.returncode == 0 else f"no Docker engine running ({done.stderr.strip()[:80]})"


@pytest.mark.skipif(bool(_docker_runs()), reason=_docker_runs() or "docker runs")
def test_the_stack_comes_up_under_docker(tmp_path):
    up = subprocess.run(["docker", "compose", "up", "-d", "--build", "superlink",
                         "supernode-0", "supernode-1", "serverapp", "clientapp-0",
                         "clientapp-1"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
    finally:
        subprocess.run(["docker", "compose", "down", "-v"], cwd=ROOT, capture_output=True,
                       timeout=300)


def test_a_supernode_killed_mid_run_leaves_the_others_to_finish(tmp_path):
    import time

    from lab.orchestration.simulation import prepare_run_dir
    from fedsim.records import read_rows

    cfg = _experiment(tmp_path, observers=("server",), attack=False)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"num_rounds": 2, "connect_timeout_s": 5.0})})
    run_dir = prepare_run_dir(cfg, tmp_path / "run")
    killed = {}

    def kill_after_round_one(topology):
        deadline = time.time() + 300
        while time.time() < deadline:
            if any(r.get("round") == 1 for r in read_rows(run_dir / "metrics.jsonl")):
                topology.stop("supernode-1")
                killed["at"] = time.time()
                return
            time.sleep(0.2)

    deploy_local(cfg, run_dir, timeout_s=400, during=kill_after_round_one)
    rows, _ = _finish(cfg, run_dir)
    assert killed and [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["clients"] == 2 and rows[1]["failures"] == 0
    later = rows[2:]  # round 2 goes on with the node that is left
    assert all(r["clients"] == 1 and r["failures"] >= 1 for r in later), later
    # the SuperLink answers for the gone node (heartbeat missed), or it is no longer listed
    cause = " ".join(later[0]["failure_causes"])
    assert "Node Unavailable" in cause or "nodes not connected" in cause
    assert "round 2: 1 of 2 clients failed" in (run_dir / "run.log").read_text()


def test_an_unreachable_superlink_ends_a_supernode_within_its_bounds(tmp_path):
    """The compose file's SuperNode, pointed at a SuperLink that is not there, gives up
    after its bounded retries with a line saying so (here with a 5 s bound, not 120)."""
    import time

    from lab.deploy import free_port, localise

    node = localise(load_compose(COMPOSE), tmp_path, tmp_path)["supernode-0"]
    args = list(node.args)
    args[args.index("--superlink") + 1] = f"127.0.0.1:{free_port()}"  # nothing listens
    args[args.index("--max-wait-time") + 1] = "5"
    exe = shutil.which(node.executable) or str(
        Path(__import__("sys").executable).parent / node.executable)
    started = time.time()
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and time.time() - started < 60
    assert "Giving up reconnection" in done.stdout + done.stderr
