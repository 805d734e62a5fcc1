"""Every path and file name of a run folder, in one place.

A run folder is what `fedsim run`, a deployment, `fedsim attack` and every cell of a sweep
leave behind, and what `fedsim report`, `evaluate`, `watch` and the sweep tables read: the
same names in every writer and reader, so they are spelled here and nowhere else.

    config.toml      the resolved experiment          metrics.jsonl  one row per round
    leakage.jsonl    one row per attack               rounds.csv / summary.csv  tables
    leakage_oracle.jsonl  the oracle-tuned upper bound of tuned attacks (attack.tuning)
    report.html/.md  the report                       run.lock       held while a run writes
    captures/round_RRR/global.pt, <observer>_client_PPP.pt/.json, <observer>_aggregate.pt
    attacks/round_RRR_<capture stem>_<attack>.png/.pt/.json   one attack's files
    done.json        a sweep cell's finished mark
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

AGGREGATE = -1  # partition_id of a capture that holds only the round's aggregate
ATTACK_FILES = (".png", ".pt", ".json")  # one attack's grid, reconstruction, record
LOCK_NAME = "run.lock"


def capture_stem(observer: str, partition_id: int) -> str:
    """`<observer>_client_PPP`, or `<observer>_aggregate` for a round's aggregate."""
    if partition_id == AGGREGATE:
        return f"{observer}_aggregate"
    return f"{observer}_client_{partition_id:03d}"


def attack_stem(server_round: int, observer: str, partition_id: int, attack: str) -> str:
    """The stem of one attack's files in attacks/ (before any `_2` that keeps it free)."""
    return f"round_{server_round:03d}_{capture_stem(observer, partition_id)}_{attack}"


class RunFolder:
    """The files of one run folder under `root`."""

    __slots__ = ("root",)

    def __init__(self, root: Union[str, Path, "RunFolder"]):
        self.root = root.root if isinstance(root, RunFolder) else Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    config = property(lambda self: self.root / "config.toml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    leakage = property(lambda self: self.root / "leakage.jsonl")
    # the oracle-tuned upper bound (attack.tuning.oracle): never in leakage.jsonl's tables
    oracle_leakage = property(lambda self: self.root / "leakage_oracle.jsonl")
    rounds_csv = property(lambda self: self.root / "rounds.csv")
    summary_csv = property(lambda self: self.root / "summary.csv")
    report_html = property(lambda self: self.root / "report.html")
    report_md = property(lambda self: self.root / "report.md")
    lock = property(lambda self: self.root / LOCK_NAME)
    done = property(lambda self: self.root / "done.json")
    captures = property(lambda self: self.root / "captures")
    attacks = property(lambda self: self.root / "attacks")

    def round_dir(self, server_round: int) -> Path:
        return self.captures / f"round_{server_round:03d}"

    def capture(self, server_round: int, observer: str, partition_id: int) -> Path:
        """The .pt of one capture (its header is the same path with .json)."""
        return self.round_dir(server_round) / f"{capture_stem(observer, partition_id)}.pt"

    def global_weights(self, server_round: int) -> Path:
        """The weights before the round, written once per round beside its captures."""
        return self.round_dir(server_round) / "global.pt"

    def client_view(self, server_round: int) -> Path:
        """The global model an honest-but-curious client received in the round."""
        return self.round_dir(server_round) / "client_view_global.pt"
