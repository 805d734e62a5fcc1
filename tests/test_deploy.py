"""The deployment (docker-compose.yml), verified without Docker:

1. every service's command flags exist in the installed Flower (or fedsim) command's
   --help, for every env file and profile, and the images follow the pinned flwr version;
2. the same topology runs as local processes on loopback (SuperLink, 2 SuperNodes,
   SuperExecs, the wire proxy), the run completes with its report, and the proxy's captures
   equal the server's and score the same;
3. under TLS the run completes and the proxy decodes nothing;
4. a certificate that cannot be loaded ends with one line naming the SuperLink, not a hang;
5. a SuperNode stopped mid-run leaves round 2 to the other and `fedsim deploy` exits 3;
   SIGTERM or SIGINT stops every process of the deployment with one line (143, 130); bad
   inputs are one line (exit 2) before any folder is made;
Docker itself brings the stack up in tests/test_docker.py.
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
from lab.compose import load_compose, read_env_file
from lab.deploy import DeployError, deploy_local
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
    from lab.orchestration.simulation import finish_files
    from lab.report import build_report

    rows = finish_files(run_dir)
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
    # every reply of the 2 rounds paired with its message, though Flower sends an object
    # the SuperLink already stores only once (the proxy keeps finished exchanges' objects)
    assert dep.wire["decoded_replies"] == 4 and dep.wire["waiting_replies"] == 0
    assert dep.wire["refused_bodies"] == dep.wire["refused_connections"] == 0
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


def _start_deploy(cfg, tmp_path, *extra):
    """`fedsim deploy --local` of `cfg` as a process of its own: (process, run folder)."""
    import os
    import sys

    path = tmp_path / "exp.toml"
    path.write_text(cfg.to_toml())
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "deploy", str(path), "--local",
                             "--run-dir", str(run_dir), "--timeout-s", "400", *extra],
                            env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, run_dir


def _wait_for_round(proc, run_dir, rnd: int, guard_s: float = 300) -> bool:
    """Until metrics.jsonl has round `rnd` (a bound against hangs, not a timing check)."""
    import json
    import time

    deadline = time.time() + guard_s
    while proc.poll() is None and time.time() < deadline:
        lines = ((run_dir / "metrics.jsonl").read_text().splitlines()
                 if (run_dir / "metrics.jsonl").is_file() else [])
        for line in lines:
            try:
                if json.loads(line).get("round") == rnd:
                    return True
            except ValueError:  # a line being written
                pass
        time.sleep(0.2)
    return False


def _ours(tmp_path):
    """The processes a test's deployment started (they all carry its folder in their
    environment: FLWR_HOME, FEDSIM_RUN_DIR)."""
    from tests.helpers import processes

    return processes(env_has=str(tmp_path))


def test_a_supernode_killed_mid_run_leaves_the_others_to_finish_and_exits_3(tmp_path):
    """`fedsim deploy` with SuperNode 1 stopped after round 1: round 2 goes on with the
    other node, its failure is counted, and the exit status is 3 with one line counting
    the failures, as for `fedsim run`."""
    import os
    import signal

    from fedsim.records import read_rows

    cfg = _experiment(tmp_path, observers=("server",), attack=False)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"num_rounds": 2, "connect_timeout_s": 5.0})})
    proc, run_dir = _start_deploy(cfg, tmp_path)
    try:
        assert _wait_for_round(proc, run_dir, 1), proc.poll()
        from tests.helpers import processes

        node = [pid for pid, cmd in processes(cmd_has="partition-id=1",
                                              env_has=str(tmp_path))
                if "flower-supernode" in cmd]
        assert len(node) == 1, _ours(tmp_path)
        os.killpg(node[0], signal.SIGTERM)  # its own process group, as the deployment made
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, err
    assert err.strip().splitlines() == ["client failures: 1 in rounds 2 (causes in "
                                        "metrics.jsonl and run.log)"]
    rows = read_rows(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["clients"] == 2 and rows[1]["failures"] == 0
    assert rows[2]["clients"] == 1 and rows[2]["failures"] == 1, rows[2]
    # the SuperLink answers for the gone node (heartbeat missed, or its message deleted
    # with the node: which one depends on when in the round it went), or it is not listed
    cause = " ".join(rows[2]["failure_causes"])
    assert any(c in cause for c in ("Node Unavailable", "nodes not connected",
                                    "destination SuperNode was removed")), cause
    assert "round 2: 1 of 2 clients failed" in (run_dir / "run.log").read_text()
    assert (run_dir / "rounds.csv").is_file() and "deployed run: 2 of 2 rounds" in out
    assert not _ours(tmp_path)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_process_of_the_deployment_with_one_line(tmp_path, sig):
    """SIGTERM (or Ctrl-C's SIGINT) after round 1: the SuperLink, the SuperNodes, the
    SuperExecs and their apps are all stopped, the finished rounds' tables are written,
    one line names the run folder, and the exit status is 143 (130)."""
    import os
    import signal

    cfg = _experiment(tmp_path, observers=("server",), attack=False)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"num_rounds": 6})})
    proc, run_dir = _start_deploy(cfg, tmp_path)
    try:
        assert _wait_for_round(proc, run_dir, 1), proc.poll()
        started = _ours(tmp_path)
        names = " ".join(cmd for _, cmd in started)
        assert all(n in names for n in ("flower-superlink", "flower-supernode",
                                        "flower-superexec")), started
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + getattr(signal, sig), (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({sig})"), err
    assert str(run_dir) in lines[0] and "Traceback" not in out + err
    assert not _ours(tmp_path), _ours(tmp_path)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 3  # header, round 0, round 1 at least
    assert (run_dir / "rounds.csv").is_file()


def test_bad_deploy_inputs_exit_2_before_any_folder_is_made(tmp_path, capsys):
    """A missing --env-file, or an experiment whose clients the compose file's SuperNodes
    do not match: one line, exit 2, and the same --run-dir is free for the next try."""
    from lab.cli import main

    exp = tmp_path / "exp.toml"
    exp.write_text(_experiment(tmp_path).to_toml())
    run_dir = tmp_path / "run"
    assert main(["deploy", str(exp), "--local", "--env-file", str(tmp_path / "nope.env"),
                 "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"--env-file {tmp_path / 'nope.env'}: no such")
    assert not run_dir.exists() and not (tmp_path / "run-deploy").exists()
    three = tmp_path / "three.toml"
    three.write_text(tiny_config(tmp_path, federation={"num_clients": 3}).to_toml())
    assert main(["deploy", str(three), "--local", "--run-dir", str(run_dir)]) == 2
    assert "has 2 SuperNodes" in capsys.readouterr().err
    assert not run_dir.exists()


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
