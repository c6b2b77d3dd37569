"""Where the default turns stochastic: 7 steps or 8 (docs/results.md, thirteenth round). ``skipstep bench`` with
two members registered, each the default at every step count but 7:

* ``n7-eta``: at 7 steps the eta rule's stochastic side (the VP chains' eta 1, the flow path's deterministic tail
  ``snr-window:-inf:0``), everything else the default's 7-step settings (placement, order, corrector, the
  extrapolation gain's rule) -- the default with ``below:7`` instead of ``below:8`` in its eta rule;
* ``n7-sm``: at 7 steps the whole many-step member -- that eta, the placement ``p = 1 + 2/n`` without the
  log-SNR matching, the extrapolation gain 1;
* ``n7-grid``: at 7 steps the many-step placement and gain 1 with the default's own eta (which at ``w >= 6`` is
  already the first-order member's eta 1 at 7 steps: there ``n7-grid`` is what ``FEW_STEPS_BELOW = 7`` gives).

Both are told the run's guidance scale, as ``default`` is (from ``w = 6`` the default is already stochastic from
7 steps). The round ran at commit 6a7965f, when the default split at 8 steps; since then (``FEW_STEPS_BELOW = 7``)
``default`` *is* ``n7-sm`` at 7 steps below the strong guidance scale, so reproduce the round in a worktree of that
commit (``git worktree add /tmp/old 6a7965f``, ``PYTHONPATH=/tmp/old/src``).

    python benchmarks/seven_step_round.py bench --model digits --samplers default,n7-eta,n7-sm --nfe 7 \\
        --seed 100,101 --num-samples 2000 --num-reference 5000
    python benchmarks/seven_step_round.py score DIR [DIR ...] [--steps 6]   # the folds over the runs' models

The same members at 6 steps (``n6-eta``, ``n6-sm``, ``n6-grid``) are the fourteenth round's (run after the change).
The fifteenth round's members at 6 steps, on VP chains only (the flow path's eta rule is the flow pair's, fifth
round): ``n6-h`` (the many-step member with eta 0.5), ``n6-h-nc`` (the same without the corrector), ``n6-hf-nc``
(eta 0.5 without the corrector on the default's own 6-step placement and gain rule), ``n6-sm-nc`` (``n6-sm`` without
the corrector); ``score DIRS --steps 6 --members default,n6-sm,n6-h,...`` folds over any of them.
"""
import json
import sys
from pathlib import Path

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import is_flow_config, register_sampler
from skipstep.lab.selection import factors, quality_per_metric, scores
from skipstep.timesteps import POWER_SLOPE_MANY_STEPS

#: the step counts with members: 7 (the thirteenth round), 6 (the fourteenth: the same at 6 steps, after the change)
ROUND_STEPS = (7, 6)
METRICS = ("fd", "fd_heldout")


def _eta_from(config, steps: int) -> str:
    """The default eta rule (VP or flow) split at ``steps``."""
    return f"below:{steps}:0:snr-window:-inf:0" if is_flow_config(config) else f"below:{steps}:0:1"


def _member(at: int, eta: bool | float, grid: bool, corrector: bool = True):
    """The default but at ``at`` steps: ``eta`` True for the eta rule's stochastic side, a number for that constant
    (VP chains only), False for the default's own; ``grid`` the many-step placement with gain 1."""
    def factory(config, steps):
        if steps != at:
            return default_scheduler(config)
        if eta is True:
            overrides = {"eta": _eta_from(config, at)}
        elif eta is False:
            overrides = {}
        elif is_flow_config(config):
            raise ValueError(f"member with eta {eta} at {at} steps is defined on VP chains only")
        else:
            overrides = {"eta": float(eta)}
        if grid:
            overrides.update(extrapolation_gain=1.0, spacing_power=1.0 + POWER_SLOPE_MANY_STEPS / steps)
        if not corrector:
            overrides["use_corrector"] = False
        return default_scheduler(config, **overrides)
    return factory


for _n in ROUND_STEPS:
    register_sampler(f"n{_n}-eta", _member(_n, True, False), family="candidate", stochastic=True,
                     learned_variance=True, description=f"the default with its eta rule's stochastic side at {_n} steps",
                     settings={"guidance_scale": "passed"})
    register_sampler(f"n{_n}-sm", _member(_n, True, True), family="candidate", stochastic=True, learned_variance=True,
                     description=f"the default with its many-step member (eta, p = 1 + 2/n, gain 1) at {_n} steps",
                     settings={"guidance_scale": "passed"})
    register_sampler(f"n{_n}-grid", _member(_n, False, True), family="candidate", stochastic=True,
                     learned_variance=True,
                     description=f"the default with the many-step placement and gain 1 (its own eta) at {_n} steps",
                     settings={"guidance_scale": "passed"})


#: the fifteenth round (6 steps, VP chains): name -> (eta, many-step grid, corrector)
HALF_MEMBERS = {"n6-h": (0.5, True, True), "n6-h-nc": (0.5, True, False), "n6-hf-nc": (0.5, False, False),
                "n6-sm-nc": (True, True, False)}
for _name, (_eta, _grid, _corrector) in HALF_MEMBERS.items():
    register_sampler(_name, _member(6, _eta, _grid, _corrector), family="candidate", stochastic=True,
                     learned_variance=True, settings={"guidance_scale": "passed"},
                     description=f"the default with eta {_eta if _eta is not True else 'its stochastic side'} at 6 "
                                 f"steps ({'many-step placement, gain 1' if _grid else 'its own placement'}"
                                 f"{', no corrector' if not _corrector else ''})")


def score(dirs: list[str], steps: int = 7, members: tuple[str, ...] | None = None) -> str:
    """Leave-one-model-out over the runs' model views (a model at each guidance scale is one view; a fold leaves out
    every view of its model), both metrics, at ``steps`` (the members ``default``, ``n<steps>-eta``, ``-sm``)."""
    STEPS, MEMBERS = steps, members or ("default", f"n{steps}-eta", f"n{steps}-sm")
    records = [r for d in dirs for r in json.loads((Path(d) / "results.json").read_text())
               if r["sampler"] in MEMBERS and int(r["nfe"]) == STEPS]
    view = {id(r): r["model"] + (f" w={r['guidance_scale']:g}" if r.get("guidance_scale") is not None else "")
            for r in records}
    quality = quality_per_metric([dict(r, model=view[id(r)]) for r in records], METRICS)
    views = sorted({view[id(r)] for r in records})
    models = sorted({r["model"] for r in records})
    lines = ["| held out | chosen on the other models (score) | the others | on the held-out views (`fd`, `fd_heldout`): "
             + " / ".join(MEMBERS) + " (those run) |", "|---|---|---|---|"]
    present = [c for c in MEMBERS if any(key[0] == c for key in quality)]
    for held in models + [None]:
        others = [v for v in views if held is None or v.split(" w=")[0] != held]
        ranking = scores(quality, present, factors(others, METRICS), [STEPS])
        mine = [v for v in views if held is not None and v.split(" w=")[0] == held]
        on_held = "; ".join(f"{v}: " + " / ".join(", ".join(f"{quality[(c, f, STEPS)]:.3g}"
                                                            for f in factors([v], METRICS))
                                                   for c in present) for v in mine)
        rest = ", ".join(f"`{c}` {v:.3f}" for c, v in ranking[1:])
        lines.append(f"| {held or 'none (all)'} | `{ranking[0][0]}` {ranking[0][1]:.3f} | {rest} | {on_held} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        args, options = sys.argv[2:], {}
        for flag in ("--steps", "--members"):
            if flag in args:
                options[flag] = args.pop(args.index(flag) + 1)
                args.remove(flag)
        members = tuple(options["--members"].split(",")) if "--members" in options else None
        print(score(args, int(options.get("--steps", 7)), members))
        sys.exit(0)
    sys.exit(cli.main(sys.argv[1:]))
