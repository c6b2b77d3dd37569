"""Five more peers against the report's standing (docs/results.md, "The web UIs' samplers"): on flow models
iPNDM and DPM-Solver++(3M) SDE as ComfyUI runs them (``ipndm-simple``, ``dpmpp-3m-sde-simple``), on VP chains
DPM-Solver++(2M) / SDE-DPM-Solver++(2M) / DPM-Solver++ SDE on Karras sigmas (``dpmpp-2m-karras``,
``dpmpp-2m-sde-karras``, ``dpmpp-sde-karras``). On flow models the Karras-schedule k-diffusion peers (``ipndm``,
``dpmpp-3m-sde-k``), which the report ran at NFE 5 and 10 only, are run at every NFE with them and count as rivals.

    skipstep bench --model $M --samplers default,ipndm-simple,dpmpp-3m-sde-simple,ipndm,dpmpp-3m-sde-k \\
        --nfe 3,4,5,6,7,8,10,15,20 --seed 0,1,2 --num-samples 2000 --num-reference 5000 --out cf-$M   # flow
    skipstep bench --model $M --samplers default,dpmpp-2m-karras,dpmpp-2m-sde-karras,dpmpp-sde-karras \\
        --nfe 3,4,5,6,8,10,15,20 --seed 0,1,2 --num-samples 2000 --num-reference 5000 --out kv-$M    # VP
    python benchmarks/more_peers.py RUNS
    python benchmarks/more_peers.py --tables RUNS   # kv-digits-v, kv-digits-cfg-w1 / -w2 / -w8 (below)

Each cell's earlier standing is read from docs/results.md: on flow models the tables "`M` with the repaired peers"
(the best of thirteen peers per reference, and the standing), on VP chains the default's ratio to the best peer
(the report's NFE 8-20 table, the tenth round's NFE 3-6 table; ``digits-cfg`` at w = 4 the report's) and the cells
where one peer is better on both (``DOMINATED_VP``, that section's list). The best earlier peer of a VP cell is the
rerun default over its printed ratio, so its value carries the ratio's two decimals.

``--tables``: the models whose report prints every peer's mean (``PEER_TABLES``: ``digits-v``, ``digits-cfg`` at
w = 1, 2, 8; run dirs ``kv-digits-v``, ``kv-digits-cfg-w$w``). The earlier peers' means are read from those tables
(three significant digits), the default is this run's (the current default), so "before" is the current default
against the earlier peers and every standing, dominated included, is computed from the means.
"""
import re
import sys
from pathlib import Path

from repaired_flow_peers import METRICS, mean_cells  # the same per-cell means over the three report seeds

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
NEW = {"ipndm-simple", "dpmpp-3m-sde-simple", "dpmpp-2m-karras", "dpmpp-2m-sde-karras", "dpmpp-sde-karras",
       "ipndm", "dpmpp-3m-sde-k"}  # the last two: on flow models in the every-peer run at NFE 5 and 10 only, till now
#: docs/results.md, "The report" and "After the tenth round": the VP cells where one peer is better on both
DOMINATED_VP = {("digits", 10), ("digits", 15), ("digits", 20), ("digits-lv", 10), ("digits-lv-b", 3),
                ("digits-lv-b", 4), ("digits-lv-b", 6), ("digits-eps-b", 6)}
#: the nine models of the report's 72 cells (with NFE_COLUMNS["report"])
REPORT_MODELS = {"digits", "digits-cfg", "digits-eps-b", "digits-eps-c", "digits-flow", "digits-flow-b", "digits-lv",
                 "digits-lv-b", "digits-vzsnr"}
NFE_COLUMNS = {"report": (3, 4, 5, 6, 8, 10, 15, 20), "tenth": (3, 4, 5, 6)}


def _value(text: str) -> tuple[float, str]:
    value, name = re.match(r"\s*([\d.]+) \(([^)]+)\)", text).groups()
    return float(value), name


def flow_baseline(text: str) -> dict:
    """``(model, nfe) -> {"best": {metric: (value, peer)}, "standing": str}`` from the repaired-peer tables."""
    out = {}
    for model, body in re.findall(r"#### `([^`]+)` with the repaired peers\n\n(.*?)(?=\n\n|\n#)", text, re.S):
        for row in body.splitlines()[2:]:
            cells = [c.strip() for c in row.strip("|").split("|")]
            best = {}
            for i, m in enumerate(METRICS):
                best[m] = min(_value(cells[2].split(" / ")[i]), _value(cells[3].split(" / ")[i]))
            standing = cells[5] if not cells[5].startswith("dominated") else "dominated"
            out[(model, int(cells[0]))] = {"best": best, "standing": standing}
    return out


def vp_ratios(text: str) -> dict[tuple[str, int], tuple[float, float]]:
    """The default's ``fd`` / ``fd_heldout`` over the best peer's: the report's table, then the tenth round's."""
    out = {}
    for heading, key in (("**The default's ratio to the best peer**", "report"),
                         ("The default's ratio to the best peer, `fd` / `fd_heldout`, with the previous", "tenth")):
        table = text[text.index(heading):].split("\n\n", 2)[1]
        for row in table.splitlines()[2:]:
            cells = [c.strip() for c in row.strip("|").split("|")]
            model = cells[0].strip("`").split(" ")[0]
            for nfe, cell in zip(NFE_COLUMNS[key], cells[1:]):
                fd, fdh = (float(v) for v in re.match(r"\**([\d.]+) / ([\d.]+)", cell).groups())
                out[(model, nfe)] = (fd, fdh)
    return out


def standing(ratio: tuple[float, float], dominated: bool) -> str:
    """A printed ratio of 1.00 is behind (the report counts `digits-lv` at NFE 20, 0.96 / 1.00, as a trade)."""
    if dominated:
        return "dominated"
    return "ahead" if max(ratio) < 1 else "behind on both" if min(ratio) >= 1 else "trade"


def table(model: str, cells: dict, before, tally: list) -> list[str]:
    lines = [f"#### `{model}`", "", "| NFE | default fd / fd_heldout | best peer of this run | default / best of all | "
             "standing before -> with the new peers |", "|---|---|---|---|---|"]
    for nfe in sorted({n for s, n in cells if s == "default"}):
        d = cells[("default", nfe)]
        rivals = {s: v for (s, n), v in cells.items() if n == nfe and s in NEW}
        if not rivals or (model, nfe) not in before:
            continue
        old_best, old_standing = before[(model, nfe)]
        new_best = {m: min((v[m], s) for s, v in rivals.items()) for m in METRICS}
        ratio = tuple(d[m] / min(old_best[m], new_best[m][0]) for m in METRICS)
        one_beats_both = [s for s, v in rivals.items() if all(v[m] < d[m] for m in METRICS)]
        now = standing(ratio, old_standing == "dominated" or bool(one_beats_both))
        show = " / ".join(f"{new_best[m][0]:.3g} ({new_best[m][1]})" for m in METRICS)
        note = f" (by {', '.join(one_beats_both)})" if one_beats_both else ""
        lines.append(f"| {nfe} | {d['fd']:.3g} / {d['fd_heldout']:.3g} | {show} | {ratio[0]:.2f} / {ratio[1]:.2f} | "
                     f"{old_standing} -> {now}{note} |")
        tally.append((model, nfe, old_standing, now))
    return lines


#: run dir -> the heading above the report's per-peer tables (the first ``**fd**`` and ``**fd_heldout**`` after it)
PEER_TABLES = {"kv-digits-v": "### A model trained after every choice: `digits-v`",
               "kv-digits-cfg-w1": "##### Report: digits-cfg, guidance scale 1",
               "kv-digits-cfg-w2": "##### Report: digits-cfg, guidance scale 2",
               "kv-digits-cfg-w8": "##### Report: digits-cfg, guidance scale 8"}


def printed_peer_means(text: str, heading: str) -> dict[tuple[str, int], dict[str, float]]:
    """``(peer, nfe) -> metric -> mean`` from the two tables after ``heading`` (``default`` and ratio rows left out)."""
    after = text[text.index(heading):]
    out: dict = {}
    for metric in METRICS:
        block = after[after.index(f"**{metric}** (lower is better)"):].split("\n\n", 2)[1]
        rows = block.splitlines()
        nfes = [int(c.split()[-1]) for c in rows[0].strip("|").split("|")[1:]]
        for row in rows[2:]:
            cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
            name = cells[0].strip("`")
            if name == "default" or name.startswith("default /"):
                continue
            for nfe, cell in zip(nfes, cells[1:]):
                if cell not in ("-", ""):
                    out.setdefault((name, nfe), {})[metric] = float(cell.split("±")[0].strip("* "))
    return {k: v for k, v in out.items() if len(v) == len(METRICS)}


def peer_table_standing(runs: Path) -> str:
    """Per run of ``PEER_TABLES``: the current default against the printed peers, then with the new ones."""
    text = RESULTS.read_text()
    out = []
    for run, heading in PEER_TABLES.items():
        if not (runs / run / "results.json").exists():
            continue
        earlier = printed_peer_means(text, heading)
        cells = mean_cells(runs, [run], NEW | {"default"})
        lines = [f"#### `{run[3:]}`", "", "| NFE | default fd / fd_heldout | best new peer | best earlier peer | "
                 "default / best of all | standing before -> with the new peers |", "|---|---|---|---|---|---|"]
        for nfe in sorted({n for s, n in cells if s == "default"}):
            d = cells[("default", nfe)]
            old = {s: v for (s, n), v in earlier.items() if n == nfe}
            new = {s: v for (s, n), v in cells.items() if n == nfe and s in NEW}
            if not old or not new:
                continue
            verdicts = []
            for rivals in (old, {**old, **new}):
                ratio = tuple(d[m] / min(v[m] for v in rivals.values()) for m in METRICS)
                both = [s for s, v in rivals.items() if all(v[m] < d[m] for m in METRICS)]
                verdicts.append((ratio, standing(ratio, bool(both)), both))
            show = lambda c: " / ".join(f"{min((v[m], s) for s, v in c.items())[0]:.3g} "  # noqa: E731
                                        f"({min((v[m], s) for s, v in c.items())[1]})" for m in METRICS)
            (_, before, _), (ratio, now, both) = verdicts
            note = f" (by {', '.join(sorted(both))})" if both else ""
            lines.append(f"| {nfe} | {d['fd']:.3g} / {d['fd_heldout']:.3g} | {show(new)} | {show(old)} | "
                         f"{ratio[0]:.2f} / {ratio[1]:.2f} | {before} -> {now}{note} |")
        out += lines + [""]
    return "\n".join(out)


def main(runs: Path) -> str:
    text = RESULTS.read_text()
    flow, vp = flow_baseline(text), vp_ratios(text)
    out, tally = [], []
    for run in sorted(runs.glob("cf-*")) + sorted(runs.glob("kv-*")):
        if not (run / "results.json").exists():
            continue
        model, cells = run.name[3:], mean_cells(runs, [run.name], NEW | {"default"})
        if run.name.startswith("cf-"):
            before = {k: ({m: v["best"][m][0] for m in METRICS}, v["standing"]) for k, v in flow.items()}
        else:
            before = {}
            for (m, nfe), ratio in vp.items():
                if m == model and ("default", nfe) in cells:
                    d = cells[("default", nfe)]
                    best = {k: d[k] / r for k, r in zip(METRICS, ratio)}
                    before[(m, nfe)] = (best, standing(ratio, (m, nfe) in DOMINATED_VP))
        out += table(model, cells, before, tally) + [""]
    kinds = ("ahead", "trade", "behind on both", "dominated")
    in_72 = [t for t in tally if t[0] in REPORT_MODELS and t[1] in NFE_COLUMNS["report"]]
    for label, rows in (("the 72 report cells measured here", in_72), ("every cell measured here", tally)):
        counts = [" / ".join(str(sum(t[i] == k for t in rows)) for k in kinds) for i in (2, 3)]
        out.append(f"{label} ({len(rows)}): ahead / trade / behind on both / dominated {counts[0]} -> {counts[1]}")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "--tables":
        print(peer_table_standing(Path(sys.argv[2])))
    else:
        print(main(Path(sys.argv[1])))
