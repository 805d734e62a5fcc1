"""The `fedsim` command line: a parser over the command modules (`lab.commands`), and every
expected failure turned into one line and an exit status. The library never imports it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from fedsim.config import ConfigError
from lab.commands import COMMANDS
from fedsim.runtime import Exit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(command_module=module)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each line (not the stream of the
    moment it was made), so a replaced or closed stderr never breaks logging."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_console_logging() -> None:
    """fedsim's progress lines on the terminal."""
    ours = logging.getLogger("fedsim")
    if not any(isinstance(h, _StderrHandler) for h in ours.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_console_logging()
    from attacker.user_model import UserModelError
    from fedsim.app_facts import FactsError
    from fedsim.data.datasets import DataFormatError, DataNotFoundError
    from fedsim.run_files import RunFileError
    from fedsim.runtime import RunFailed
    from lab.deploy import DeployError
    from lab.foreign import OriginalsError
    from fedsim.metrics import MatchingError
    from fedsim.metrics.lpips_install import LPIPSInstallError
    from fedsim.records import DiskFull, RecordsError, disk_full
    from fedsim.runtime import raise_on_signals, restore_signals

    callers = raise_on_signals()  # SIGTERM too: one line and 143, wherever it lands
    try:
        return args.command_module.run(args)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (fedsim.runtime.Interrupted)
        print(str(err) or "interrupted (SIGINT)", file=sys.stderr)
        return getattr(err, "status", 128 + signal.SIGINT)
    except (ConfigError, DataNotFoundError, DataFormatError, RunFileError, UserModelError,
            OriginalsError, FactsError) as err:
        print(err, file=sys.stderr)
        return Exit.BAD_INPUT
    except MatchingError as err:  # the attack diverged: nothing to score
        print(f"attack failed: {err}", file=sys.stderr)
        return Exit.ATTACK_FAILURES
    except LPIPSInstallError as err:
        print(f"fedsim lpips install failed: {err}", file=sys.stderr)
        return Exit.FAILED
    except (RunFailed, DeployError) as err:
        print(f"run failed: {err}", file=sys.stderr)
        return Exit.FAILED
    except RecordsError as err:
        print(err, file=sys.stderr)
        return Exit.BAD_INPUT
    except (DiskFull, OSError) as err:
        full = disk_full(err, None)
        if full is None:
            raise
        print(full, file=sys.stderr)
        return Exit.FAILED
    finally:
        restore_signals(callers)


if __name__ == "__main__":
    sys.exit(main())
