"""`fedsim eavesdrop`: a forwarding proxy between SuperNodes and the SuperLink that
captures the updates it can read (lab/wire.py), until stopped."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import ConfigError, load
from lab.commands.common import positive
from fedsim.run_folder import RunFolder

HELP = "a forwarding proxy between SuperNodes and the SuperLink that captures the updates it can read"


def add_arguments(p) -> None:
    p.add_argument("--listen", required=True, help="HOST:PORT the SuperNodes connect to")
    p.add_argument("--upstream", required=True, help="the SuperLink's HOST:PORT")
    p.add_argument("--out", required=True, type=Path, help="run folder for the captures")
    p.add_argument("--config", help="the experiment (default: FEDSIM_CONFIG_TOML, else the "
                   "run folder's config.toml once the run has started)")
    p.add_argument("--facts", type=Path, help="your app's AppFacts as TOML, instead")
    p.add_argument("--max-body-mb", type=positive(float), help="refuse larger request "
                   "and response bodies (default: from the experiment's model, at least "
                   "what Flower sends: a FAB or an array chunk, plus 1 MiB)")
    p.add_argument("--max-held-mb", type=positive(float), help="objects of unfinished "
                   "exchanges held at most; the oldest go first (default: 16 bodies, at "
                   "least 256)")
    p.add_argument("--object-ttl-s", type=positive(float), help="drop an object or "
                   "message no exchange touched for this long (default 1800)")
    p.add_argument("--idle-timeout-s", type=positive(float), help="close a connection "
                   "silent this long (default 120)")
    p.add_argument("--max-connections", type=positive(int), help="connections at once; "
                   "one more closes the longest idle (default 64)")


def run(args) -> int:
    """The wire proxy, until stopped."""
    import os
    import signal
    import threading

    from fedsim.app_facts import AppFacts
    from fedsim.reply_capture import ReplyCapture
    from fedsim.runtime import ENV_CONFIG, config_from_runtime
    from lab.wire import MiB, Limits, message_bytes, parse_address, serve
    from server.capture import declared_facts

    parse_address(args.listen, "--listen", allow_any_port=True)  # one line, before any work
    parse_address(args.upstream, "--upstream")
    experiment = None  # the facts: --facts, --config, the environment's experiment, or the
    if args.facts:     # run folder's config.toml (written by the ServerApp when it starts)
        AppFacts.from_toml(args.facts)  # a bad declaration: one line, before listening
    elif args.config or os.environ.get(ENV_CONFIG):
        experiment = load(args.config) if args.config else config_from_runtime()

    def writer() -> ReplyCapture:
        if args.facts:
            return ReplyCapture(args.out, AppFacts.from_toml(args.facts), observer="wire")
        cfg = experiment or load(RunFolder(args.out).config)
        return ReplyCapture(args.out, declared_facts(cfg), observer="wire",
                            rounds=cfg.capture.rounds)

    def mib(value):
        return int(value * MiB) if value is not None else None

    if experiment is not None:
        from fedsim.experiment import experiment_for

        model_bytes = message_bytes(experiment_for(experiment).new_model())
    else:
        model_bytes = None
    limits = Limits.derived(model_bytes, max_body_bytes=mib(args.max_body_mb),
                            max_held_bytes=mib(args.max_held_mb), object_ttl_s=args.object_ttl_s,
                            idle_timeout_s=args.idle_timeout_s,
                            max_connections=args.max_connections)
    try:
        server = serve(args.listen, args.upstream, writer, Path(args.out) / "wire.json",
                       limits=limits)
    except OSError as err:
        raise ConfigError(f"--listen {args.listen}: cannot listen there ({err.strerror})") from None
    print(f"eavesdropping on {args.listen} -> {args.upstream}; captures in {args.out}; "
          f"bodies up to {limits.max_body_bytes / MiB:.1f} MiB, "
          f"{limits.max_held_bytes / MiB:.0f} MiB held, {limits.max_connections} connections "
          f"idle at most {limits.idle_timeout_s:g} s", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0
