"""The analytic first step in the diffusers scheduler against the default and the best peer (docs/results.md,
"The analytic first step in a pipeline"): ``default-moments`` is the default scheduler with
``set_data_moments(training-split mean, var)`` run by the bench's diffusers loop.

    skipstep bench --model $M --samplers default,default-moments --nfe 3,4,5 --seed 0,1,2 --num-samples 2000 \\
        --num-reference 5000 --out af-$M
    python benchmarks/moments_table.py RUNS

The best peer of a cell: for the report's models the default's value over its printed ratio to the best of all
peers in "The web UIs' samplers" tables (two decimals); for ``digits-v`` the peers printed in its report tables
and the Karras peers' run ``kv-digits-v`` in ``RUNS``.
"""
import re
import sys
from pathlib import Path

from more_peers import NEW, PEER_TABLES, RESULTS, printed_peer_means
from repaired_flow_peers import METRICS, mean_cells

MODELS = ("digits", "digits-eps-b", "digits-eps-c", "digits-lv", "digits-lv-b", "digits-vzsnr", "digits-v")


def web_ui_best(text: str, model: str) -> dict[int, dict[str, float]]:
    """``nfe -> metric -> best of all peers`` from the model's table in "The web UIs' samplers" (VP part)."""
    vp = text[text.index("#### The VP models"):]
    body = vp[vp.index(f"#### `{model}`\n"):].split("\n\n", 2)[1]
    out = {}
    for row in body.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        default = [float(v) for v in cells[1].split(" / ")]
        ratio = [float(v) for v in re.findall(r"[\d.]+", cells[3])]
        out[int(cells[0])] = {m: d / r for m, d, r in zip(METRICS, default, ratio)}
    return out


def best_peers(text: str, runs: Path, model: str) -> dict[int, dict[str, float]]:
    if model != "digits-v":
        return web_ui_best(text, model)
    cells = {**printed_peer_means(text, PEER_TABLES["kv-digits-v"]), **mean_cells(runs, ["kv-digits-v"], NEW)}
    return {n: {m: min(v[m] for (s, k), v in cells.items() if k == n) for m in METRICS}
            for n in sorted({k for _, k in cells})}


def main(runs: Path) -> str:
    text = RESULTS.read_text()
    lines = ["| model | NFE | default `fd` / `fd_heldout` | with the moments | moments / default | "
             "moments / best peer |", "|---|---:|---|---|---|---|"]
    for model in MODELS:
        if not (runs / f"af-{model}" / "results.json").exists():
            continue
        cells = mean_cells(runs, [f"af-{model}"], {"default", "default-moments"})
        best = best_peers(text, runs, model)
        for nfe in sorted({n for _, n in cells}):
            d, a = cells[("default", nfe)], cells[("default-moments", nfe)]
            show = lambda v: " / ".join(f"{v[m]:.3g}" for m in METRICS)  # noqa: E731
            lines.append(f"| `{model}` | {nfe} | {show(d)} | {show(a)} | "
                         f"{' / '.join(f'{a[m] / d[m]:.2f}' for m in METRICS)} | "
                         f"{' / '.join(f'{a[m] / best[nfe][m]:.2f}' for m in METRICS)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
