"""The repaired flow peers' table (docs/results.md, "SA-Solver and DEIS on flow models"): per NFE the default,
the best of the report's ten flow peers, the best of ``sa-solver-zero`` / ``sa-solver-3-zero`` / ``deis-zero``,
the default over the best of all, and its standing against all (means over the 3 report seeds, both metrics).

    python benchmarks/repaired_flow_peers.py RUNS MODEL [MODEL ...]

``RUNS`` holds ``z-MODEL/`` (the repaired peers' bench with ``default``) and the report runs named in ``REPORT``.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

REPORT = {"digits-flow": ["r16rep/final-digits-flow", "r17rep/final-digits-flow-hi"],
          "digits-flow-b": ["r16rep/final-digits-flow-b", "r17rep/final-digits-flow-b-hi"],
          "digits-flow-c": ["fc/final-a", "fc/final-b"],
          "digits-flow-d": ["fdd/final-a", "fdd/final-b"]}
TEN = set("sa-solver,unipc,dpmpp-2m,dpmpp-2m-sde,flow-euler,sa-solver-3,dpmpp-3m-sde,dpmpp-3m,unipc-2,dpmpp-2s".split(","))
REPAIRED = {"sa-solver-zero", "sa-solver-3-zero", "deis-zero"}
METRICS = ("fd", "fd_heldout")


def mean_cells(runs: Path, dirs: list[str], samplers: set[str]) -> dict[tuple[str, int], dict[str, float]]:
    """``(sampler, nfe) -> metric -> mean`` over the three report seeds."""
    found = defaultdict(list)
    for d in dirs:
        for rec in json.loads((runs / d / "results.json").read_text()):
            if rec["sampler"] in samplers:
                found[(rec["sampler"], rec["nfe"])].append(rec["metrics"])
    return {k: {m: sum(r[m] for r in v) / len(v) for m in METRICS} for k, v in found.items() if len(v) == 3}


def best(cells: dict, nfe: int, metric: str) -> tuple[float, str]:
    return min((v[metric], s) for (s, n), v in cells.items() if n == nfe and s != "default")


def table(runs: Path, model: str) -> str:
    ten = mean_cells(runs, REPORT[model], TEN)
    ours = mean_cells(runs, [f"z-{model}"], REPAIRED | {"default"})
    lines = [f"### {model}", "| NFE | default fd / fd_heldout | best of the ten peers | best repaired peer | "
             "default / best of all (fd / fd_heldout) | standing |", "|---|---|---|---|---|---|"]
    for n in sorted({k[1] for k in ours}):
        d = ours[("default", n)]
        b10, brep = ({m: best(c, n, m) for m in METRICS} for c in (ten, ours))
        ratio = [d[m] / min(b10[m], brep[m])[0] for m in METRICS]
        rivals = {k: v for c in (ten, ours) for k, v in c.items() if k[1] == n and k[0] != "default"}
        beats_both = [s for (s, _), v in rivals.items() if all(v[m] < d[m] for m in METRICS)]
        standing = ("ahead" if all(r <= 1 for r in ratio) else f"dominated by {','.join(beats_both)}" if beats_both
                    else "behind on both" if all(r > 1 for r in ratio) else "trade")
        show = lambda b: " / ".join(f"{b[m][0]:.3g} ({b[m][1]})" for m in METRICS)  # noqa: E731
        lines.append(f"| {n} | {d['fd']:.3g} / {d['fd_heldout']:.3g} | {show(b10)} | {show(brep)} | "
                     f"{ratio[0]:.2f} / {ratio[1]:.2f} | {standing} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n".join(table(Path(sys.argv[1]), m) for m in sys.argv[2:]))
