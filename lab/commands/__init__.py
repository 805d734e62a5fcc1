"""fedsim's commands, one module each: `HELP`, `add_arguments(parser)` and `run(args)`
returning an exit status (`lab.commands.common.Exit`). A new command is one module and one
entry here; `lab.cli` builds the parser from this list."""

from lab.commands import (attack, certs, config, deploy, eavesdrop, evaluate, images, lpips,
                          report, run, sweep, watch)

COMMANDS = {"run": run, "attack": attack, "evaluate": evaluate, "lpips": lpips,
            "sweep": sweep, "deploy": deploy, "eavesdrop": eavesdrop, "certs": certs,
            "watch": watch, "report": report, "config": config,
            "images": images}
