"""Compare two run folders file for file: did a refactor change what a run writes?

Files only in one folder are listed; tensors in `.pt` files are compared exactly; rows of
`metrics.jsonl` and `leakage.jsonl` field by field (wall-clock fields and per-run node ids
left out; floats within `--rtol`); other files byte for byte. Results go to
`benchmarks/results/compare_run_folders.json`.

    python benchmarks/compare_run_folders.py BEFORE AFTER
"""

import argparse
import json
import math
from pathlib import Path

import torch

from results_io import write_result  # benchmarks/ is on sys.path when run as a script

CLOCK = {"elapsed_s", "seconds", "node_id", "started", "finished"}


def _leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(x, (list, tuple)) and not all(isinstance(v, (int, float, str)) for v in x):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def _same(a, b, rtol: float) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isfinite(a) and math.isclose(a, b, rel_tol=rtol))
    return a == b


def _compare_values(a, b, rtol: float) -> dict:
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    keys = lambda d: {k for k in d if k.rsplit("/", 1)[-1] not in CLOCK}  # noqa: E731
    return {"only_before": sorted(keys(la) - keys(lb)), "only_after": sorted(keys(lb) - keys(la)),
            "differ": sorted(k for k in keys(la) & keys(lb) if not _same(la[k], lb[k], rtol))}


def compare(before: Path, after: Path, rtol: float) -> dict:
    files = lambda root: {p.relative_to(root).as_posix() for p in root.rglob("*")  # noqa: E731
                          if p.is_file()}
    fb, fa = files(before), files(after)
    out = {"only_before": sorted(fb - fa), "only_after": sorted(fa - fb), "files": {}}
    for name in sorted(fb & fa):
        pb, pa = before / name, after / name
        if name.endswith(".pt"):
            result = _compare_values(torch.load(pb, weights_only=False),
                                     torch.load(pa, weights_only=False), rtol)
        elif name.endswith((".jsonl", ".json")):
            read = (lambda p: [json.loads(line) for line in p.read_text().splitlines()]) \
                if name.endswith(".jsonl") else (lambda p: json.loads(p.read_text()))
            result = _compare_values(read(pb), read(pa), rtol)
        else:
            result = {"bytes_equal": pb.read_bytes() == pa.read_bytes()}
        out["files"][name] = result
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-6,
                    help="relative tolerance for floats in JSON rows (summation order)")
    args = ap.parse_args()
    result = compare(args.before, args.after, args.rtol)
    print("only before:", result["only_before"] or "-")
    print("only after:", result["only_after"] or "-")
    for name, r in result["files"].items():
        changes = "; ".join(f"{k} {v[:8]}" for k, v in r.items()
                            if k != "bytes_equal" and v)
        if r.get("bytes_equal") is False:
            changes = "bytes differ"
        print(f"changed  {name}: {changes}" if changes else f"same     {name}")
    write_result("compare_run_folders", {"before": str(args.before), "after": str(args.after),
                                         "rtol": args.rtol, **result})


if __name__ == "__main__":
    main()
