"""The run report: one self-contained HTML file (every image embedded, no network needed)
and a Markdown summary beside it, written from a run folder's logs and attack results.

Sections: the resolved config and the threat models; accuracy and leakage per round (one
line per observer); reconstruction grids (originals over best-matched reconstructions,
scaled up with nearest-neighbour, each image captioned with its PSNR and true/found label);
a cost table (measured attack time per batch and device, and the GPU-hours it would take
to attack every client of every round at the paper's budget).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fedsim.config import ExperimentConfig, load  # noqa: E402
from fedsim.records import read_rows  # noqa: E402
from fedsim.run_folder import RunFolder

PAPER_ITERATIONS = 10_000
MAX_GRIDS = 12  # attacks shown as grids (the worst-leaking first); all are in the tables


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def curves_figure(rounds: list[dict], attacks: list[dict]):
    """Global accuracy per round (left axis) and PSNR per observer (right axis)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    evaluated = [r for r in rounds if r.get("global_accuracy") is not None]
    ax.plot([r["round"] for r in evaluated], [r["global_accuracy"] for r in evaluated],
            color="black", marker="o", ms=3, label="global accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("global test accuracy")
    ax.set_ylim(0, 1)
    right = ax.twinx()
    for observer in sorted({a["observer"] for a in attacks}):
        mine = sorted((a["round"], a["psnr"]) for a in attacks if a["observer"] == observer)
        by_round: dict[int, list[float]] = {}
        for rnd, psnr in mine:
            by_round.setdefault(rnd, []).append(psnr)
        xs = sorted(by_round)
        right.plot(xs, [max(by_round[x]) for x in xs], marker="s", ms=4,
                   label=f"{observer}: worst-case PSNR")
    right.set_ylabel("PSNR of reconstructions (dB)")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper center", fontsize=8,
              bbox_to_anchor=(0.5, -0.18), ncol=3)
    return fig


def grid_figure(originals: torch.Tensor, recon: torch.Tensor, record: dict, labels: list):
    """Originals over their best-matched reconstructions, nearest-neighbour, captioned."""
    per_image = record["per_image"]
    n = len(per_image)
    cols = min(n, 8)
    rows = 2 * ((n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    true, found = record.get("true_labels", []), record.get("found_labels", [])
    for k, row in enumerate(per_image):
        top = axes[2 * (k // cols)][k % cols]
        bottom = axes[2 * (k // cols) + 1][k % cols]
        for ax, img in ((top, originals[row["original"]]), (bottom, recon[row["reconstruction"]])):
            arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(arr.squeeze(), cmap="gray" if arr.shape[-1] == 1 else None,
                      interpolation="nearest", vmin=0, vmax=1)
        t = labels[true[row["original"]]] if row["original"] < len(true) else "?"
        f = labels[found[row["reconstruction"]]] if row["reconstruction"] < len(found) else "?"
        top.set_title(f"true {t}", fontsize=7)
        bottom.set_title(f"{row['psnr']:.1f} dB, found {f}", fontsize=7)
    return fig


def cost_rows(cfg: ExperimentConfig, attacks: list[dict]) -> list[dict]:
    """Measured seconds per attack step, per device and batch, and the GPU-hours (on that
    device) to attack every client of every round at the paper's budget."""
    fed = cfg.federation
    out = {}
    for a in attacks:
        key = (a["attack"], a["device"], a["batch_size"])
        out.setdefault(key, []).append(a["seconds"] / max(a["iterations"], 1))
    rows = []
    for (attack, device, batch), per_step in sorted(out.items()):
        step = sum(per_step) / len(per_step)
        hours = step * PAPER_ITERATIONS * fed.num_clients * fed.num_rounds / 3600
        rows.append({"attack": attack, "device": device, "batch": batch,
                     "attacks": len(per_step), "seconds_per_step": step,
                     "seconds_per_batch_at_paper_budget": step * PAPER_ITERATIONS,
                     "hours_for_every_client_and_round": hours})
    return rows


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> tuple[str, str]:
    """(HTML, Markdown) of the rows under the given (key, heading) columns."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r.get(k)))}</td>" for k, _ in columns)
                   + "</tr>" for r in rows)
    md = ["| " + " | ".join(h for _, h in columns) + " |",
          "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return f"<table><tr>{head}</tr>{body}</table>", "\n".join(md)


LEAKAGE_COLUMNS = [("round", "round"), ("observer", "observer"), ("partition_id", "client"),
                   ("attack", "attack"), ("psnr", "PSNR dB"), ("margin_psnr", "PSNR margin dB"),
                   ("ssim", "SSIM"), ("margin_ssim", "SSIM margin"),
                   ("lpips", "LPIPS"), ("verdict", "vs baseline"), ("label_accuracy", "label acc."),
                   ("round_global_accuracy", "global acc."), ("seconds", "seconds"),
                   ("device", "device")]
COST_COLUMNS = [("attack", "attack"), ("device", "device"), ("batch", "batch"),
                ("attacks", "attacks"), ("seconds_per_step", "s / step"),
                ("seconds_per_batch_at_paper_budget", f"s / batch at {PAPER_ITERATIONS:,} steps"),
                ("hours_for_every_client_and_round", "hours for every client and round")]

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 7px;text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;
font-size:12px;max-height:30em;overflow:auto}img{max-width:100%}figure{margin:1.5em 0}"""


SUMMARY_FIGURES = [("psnr", "PSNR dB"), ("margin_psnr", "PSNR margin over baseline dB"),
                   ("ssim", "SSIM"), ("margin_ssim", "SSIM margin"), ("lpips", "LPIPS"),
                   ("margin_lpips", "LPIPS margin")]
BASELINE_NOTE = ("Each figure is the mean over attacked updates (one client's upload in one "
                 "round; its images averaged first) with its 95% bootstrap interval and n; "
                 "no interval below 5 updates. 'worst' is the most leaking update. A margin "
                 "is the attack's score minus the best trivial baseline's (the data set's "
                 "mean image, or the batch's mean colour as one constant image), paired the "
                 "same way; positive means the attack recovered more than the baseline, and "
                 "an update that does not beat it is marked 'no leak beyond baseline'.")


def summary_rows(summary: list[dict]) -> list[dict]:
    """The run's per-observer statistics as text cells: 'mean [low, high] (n=..)'."""
    from lab.stats import Summary

    rows = []
    for row in summary:
        out = {"observer": row["observer"], "attacks": row.get("attacks")}
        for key, _ in SUMMARY_FIGURES:
            stat = Summary.from_row(row, key)
            digits = 2 if "psnr" in key else 3
            out[key] = stat.text(digits, signed=key.startswith("margin"))
            out[f"{key}_worst"] = (f"{stat.worst:.{digits}f}" if stat.worst is not None else None)
        share = row.get("beats_baseline_share")
        out["beats"] = f"{100 * float(share):.0f}%" if share not in (None, "") else None
        rows.append(out)
    return rows


SUMMARY_COLUMNS = [("observer", "observer"), ("attacks", "attacked updates"),
                   *[(k, h) for k, h in SUMMARY_FIGURES],
                   ("psnr_worst", "worst PSNR dB"), ("beats", "beat the baseline")]


def summary_lines(run_dir: Path) -> list[str]:
    """The run summary's leakage lines, one per observer."""
    from lab.stats import Summary
    from lab.tables import summary_table

    lines = []
    for row in summary_table(run_dir):
        psnr, margin = Summary.from_row(row, "psnr"), Summary.from_row(row, "margin_psnr")
        lpips = Summary.from_row(row, "lpips")
        share = row.get("beats_baseline_share")
        beats = (f"; {round(float(share) * psnr.n)} of {psnr.n} beat the baseline"
                 if share is not None else "")
        lines.append(f"{row['observer']}: PSNR {psnr.text()} dB, worst {psnr.worst:.2f} dB; "
                     f"margin over baseline {margin.text(signed=True)} dB{beats}; LPIPS {lpips.text(3)}")
    return lines


def verdict(row: dict) -> str:
    if "beats_baseline" not in row:
        return "-"
    return "leaks" if row["beats_baseline"] else "no leak beyond baseline"


def build_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report.html and RUN_DIR/report.md; returns the HTML path."""
    from fedsim.experiment import experiment_for
    from lab.evaluator import saved_attack
    from lab.oracle import private_batch  # the evaluator's privileged side
    from lab.tables import leakage_table, summary_table

    run_dir = Path(run_dir)
    cfg = load(RunFolder(run_dir).config)
    rounds = read_rows(RunFolder(run_dir).metrics)
    leakage = [r for r in leakage_table(run_dir)]
    scored = [r for r in leakage if "psnr" in r and r.get("psnr") is not None]
    failed = [r for r in leakage if "error" in r]
    a = cfg.attack
    html_parts = [f"<h1>fedsim report: {html.escape(run_dir.name)}</h1>"]
    md = [f"# fedsim report: {run_dir.name}", ""]

    html_parts.append("<h2>Experiment and threat models</h2>")
    threat = (f"observers: {', '.join(a.observers)}; attack: {a.name}, {a.iterations} steps, "
              f"{a.restarts} restart(s); knowledge: BatchNorm statistics "
              f"{a.knowledge.bn_stats}, labels {a.knowledge.labels}, batch size "
              f"{a.knowledge.batch_size}; defenses: "
              f"{', '.join(d.name for d in cfg.defenses) or 'none'}")
    html_parts.append(f"<p>{html.escape(threat)}</p><pre>{html.escape(cfg.to_toml())}</pre>")
    md += ["## Experiment and threat models", "", threat, ""]

    html_parts.append("<h2>Leakage, per observer</h2>")
    h, m = _table(summary_rows(summary_table(run_dir)), SUMMARY_COLUMNS)
    html_parts.append(h + f"<p>{html.escape(BASELINE_NOTE)}</p>")
    md += ["## Leakage, per observer", "", m, "", BASELINE_NOTE, ""]

    html_parts.append("<h2>Accuracy and leakage per round</h2>")
    uri = png_data_uri(curves_figure(rounds, scored))
    html_parts.append(f'<figure><img alt="accuracy and leakage per round" src="{uri}"></figure>')
    for r in scored:
        r["verdict"] = verdict(r)
    h, m = _table(scored + failed, LEAKAGE_COLUMNS + [("error", "error")])
    html_parts.append(h)
    md += ["## Accuracy and leakage per round", "", m, ""]
    if rounds:
        final = rounds[-1]
        md += [f"Final global accuracy {final.get('global_accuracy', float('nan')):.3f} "
               f"after round {final['round']}.", ""]

    oracle = [r for r in read_rows(RunFolder(run_dir).oracle_leakage) if r.get("psnr") is not None]
    if oracle:
        for r in oracle:
            r["verdict"] = verdict(r)
        h, m = _table(oracle, LEAKAGE_COLUMNS)
        html_parts.append(f"<h2>Oracle-tuned upper bound</h2><p>{html.escape(ORACLE_NOTE)}</p>"
                          + h)
        md += ["## Oracle-tuned upper bound", "", ORACLE_NOTE, "", m, ""]

    html_parts.append("<h2>Reconstructions</h2>")
    md += ["## Reconstructions", ""]
    exp = experiment_for(cfg)
    names = list(exp.dataset.class_names)
    for r in sorted(scored, key=lambda r: -r["psnr"])[:MAX_GRIDS]:
        if "reconstruction" not in r:
            continue
        saved = saved_attack(run_dir, r)  # inside the run folder only, no code run
        originals, _ = private_batch(exp, saved.capture)
        caption = (f"round {r['round']}, {r['observer']}, client {r['partition_id']}: "
                   f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}")
        uri = png_data_uri(grid_figure(originals, saved.images, saved.record, names))
        html_parts.append(f'<figure><img alt="{html.escape(caption)}" src="{uri}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        md += [f"- {caption}: `{r['grid']}`"]
    md.append("")

    html_parts.append("<h2>Cost of attacking</h2>")
    h, m = _table(cost_rows(cfg, scored), COST_COLUMNS)
    note = (f"Extrapolated from the measured time per step to the paper's budget of "
            f"{PAPER_ITERATIONS:,} steps per batch, for every one of the "
            f"{cfg.federation.num_clients} clients in every one of the "
            f"{cfg.federation.num_rounds} rounds, on the device each attack ran on.")
    html_parts.append(h + f"<p>{html.escape(note)}</p>")
    md += ["## Cost of attacking", "", m, "", note, ""]

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>fedsim report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(html_parts)}</body></html>")
    RunFolder(run_dir).report_html.write_text(page)
    RunFolder(run_dir).report_md.write_text("\n".join(md))
    return RunFolder(run_dir).report_html


ORACLE_NOTE = ("Of each tuned attack's candidates, the one with the best true PSNR: what the "
               "strongest attacker of this family could reach. It needs the private images, "
               "so no attacker can select it: an upper bound, kept out of every table above.")


SWEEP_COLUMNS = [("label", "setting"), ("observer", "observer"),
                 ("attacks", "attacked updates"), ("psnr", "PSNR dB"),
                 ("psnr_worst", "worst PSNR dB"), ("margin_psnr", "PSNR margin over baseline"),
                 ("psnr_diff", "PSNR vs baseline setting"),
                 ("oracle_psnr", "oracle-tuned PSNR dB (upper bound)"), ("ssim", "SSIM"),
                 ("lpips", "LPIPS"), ("lpips_diff", "LPIPS vs baseline setting"),
                 ("label_accuracy", "label acc."), ("global_accuracy", "global acc. (seeds)"),
                 ("accuracy_diff", "acc. vs baseline setting"), ("dp_epsilon", "DP epsilon"),
                 ("dp_accounting", "DP accounting"),
                 ("status", "status")]
SWEEP_NOTE = ("Every figure is a mean with its 95% bootstrap interval and n: leakage over "
              "attacked updates (all replicates pooled), accuracy over seeds (replicates). "
              "'vs baseline setting' is the paired difference from the baseline setting "
              "(marked *) over the same private batches (same seed, round and client), and "
              "says 'within noise' where its interval contains 0. 'oracle-tuned' (tuned "
              "settings only) is the best candidate of the attacker's search by true PSNR: an "
              "upper bound no attacker can select, never part of the other figures.")


def _text_row(row: dict) -> dict:
    """A sweep_table row as text cells."""
    from lab.stats import Comparison, Summary

    out = {"label": row["label"] + (" *" if row["baseline"] else ""),
           "observer": row["observer"] or "-", "attacks": row["attacks"]}
    for key in ("psnr", "margin_psnr", "oracle_psnr", "ssim", "lpips", "label_accuracy",
                "global_accuracy"):
        out[key] = Summary.from_row(row, key).text(2 if "psnr" in key else 3,
                                                    signed=key.startswith("margin"))
    worst = row.get("psnr_worst")
    out["psnr_worst"] = f"{worst:.2f}" if worst is not None else None
    for figure, digits in (("psnr", 2), ("lpips", 3), ("accuracy", 3)):
        c = Comparison.from_row(row, figure)
        out[f"{figure}_diff"] = ("baseline" if row["baseline"] else
                                 c.text(digits) if c.difference is not None else None)
    eps = row.get("dp_epsilon")
    out["dp_epsilon"] = f"{eps:.3g}" if eps is not None else None
    out["dp_accounting"] = row.get("dp_accounting")
    out["status"] = row["status"]
    return out


def tradeoff_figure(rows: list[dict]):
    """Leakage against accuracy, one point per setting with both intervals (the paper's
    trade-off figure)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [r for r in rows if r.get("psnr_mean") is not None
              and r.get("global_accuracy_mean") is not None]
    for r in points:
        x, y = r["global_accuracy_mean"], r["psnr_mean"]

        def err(key, centre):
            low, high = r.get(f"{key}_low"), r.get(f"{key}_high")
            return [[centre - low], [high - centre]] if low is not None else None

        ax.errorbar(x, y, xerr=err("global_accuracy", x), yerr=err("psnr", y), fmt="o",
                    ms=5, capsize=3)
        ax.annotate(r["label"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("global test accuracy after training (higher is better)")
    ax.set_ylabel("mean PSNR of reconstructions, dB (higher leaks more)")
    ax.set_title(f"leakage against accuracy, {len(points)} settings (95% intervals)",
                 fontsize=10)
    return fig, len(points)


def build_sweep_report(root: Path) -> Path:
    """ROOT/report.html and report.md comparing the cells, and ROOT/sweep.csv."""
    from fedsim.records import write_csv

    from fedsim.run_files import inside
    from lab.sweep_stats import sweep_table

    root = Path(root)
    rows = sweep_table(root)
    write_csv(root / "sweep.csv", rows)
    fig, n_points = tradeoff_figure(rows)
    uri = png_data_uri(fig)
    h, m = _table([_text_row(r) for r in rows], SWEEP_COLUMNS)
    h += f"<p>{html.escape(SWEEP_NOTE)}</p>"
    m += "\n\n" + SWEEP_NOTE
    links = "".join(f"<li><a href='{folder}/report.html'>{html.escape(r['label'])}</a></li>"
                    for r in rows for folder in r["folders"].split()
                    if inside(root, folder, "a cell's folder").joinpath("done.json").is_file())
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>fedsim sweep</title>"
            f"<style>{STYLE}</style></head><body><h1>fedsim sweep: {html.escape(root.name)}</h1>"
            f"<h2>Leakage against accuracy</h2><figure><img alt='trade-off' "
            f"data-points='{n_points}' src='{uri}'></figure><h2>Settings</h2>{h}"
            f"<h2>Cell reports</h2><ul>{links}</ul></body></html>")
    RunFolder(root).report_html.write_text(page)
    RunFolder(root).report_md.write_text("\n".join([f"# fedsim sweep: {root.name}", "",
                                               "## Settings", "", m, ""]))
    return RunFolder(root).report_html
