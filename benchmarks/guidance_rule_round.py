"""The guidance rules chosen leave-one-model-out on the zoo's three guided models (docs/results.md, thirteenth
round): ``skipstep bench`` with the members ``gm-e<eta>-o<order>[-nc]`` registered, and ``score`` for the folds.

Under classifier-free guidance the default is one of a few members, by scale ``w`` and step count ``n``
(:func:`skipstep.steps.settings_for_guidance`): the few-step member (eta 0, order 2, corrector) below 8 steps and
the stochastic one (eta 1, order 2, corrector) from 8; from ``w >= 5`` below 7 steps eta 0, order 2 without the
corrector; from ``w >= 6`` and 7 steps the first-order skipped-step posterior (eta 1, order 1, corrector). Those
thresholds were chosen on ``digits-cfg`` alone. Each member here is one fixed ``(eta, order, corrector)`` at every
step count, on the default's placement, with the extrapolation gain 1 (the default's under guidance), so a rule
``(w, n) -> member`` is a choice among them per cell:

* ``gm-e0-o2``: eta 0, order 2, corrector (the default below 8 steps, ``w < 5``);
* ``gm-e0-o2-nc``: the same without the corrector (the default below 7 steps, ``w >= 5``);
* ``gm-e1-o2``: eta 1, order 2, corrector (the default from 8 steps, ``w < 6``);
* ``gm-e1-o1``: eta 1, order 1, corrector (the default from 7 steps, ``w >= 6``);
* ``gm-e0.5-o2-nc``: eta 0.5, order 2, no corrector (the ninth round's runner-up at ``w = 8``).

    python benchmarks/guidance_rule_round.py bench --model digits-cfg-b --guidance-scale 4 \\
        --samplers gm-e0-o2,gm-e0-o2-nc --nfe 6 --seed 100 --num-samples 2000 --num-reference 5000
    python benchmarks/guidance_rule_round.py score DIR [DIR ...]    # per (w, n): each fold's member, the ranking

``score`` keys a record by its guidance scale and step count; for each such cell, fold ``h`` (a model) ranks the
members by the geometric mean, over the other models and both metrics (``fd``, ``fd_heldout``), of the member's
mean over the seeds divided by the best member's (:func:`skipstep.lab.selection.scores`).
"""
import json
import sys
from pathlib import Path

from skipstep.lab import cli
from skipstep.lab.our_samplers import default_scheduler
from skipstep.lab.sampler_recipes import register_sampler
from skipstep.lab.selection import factors, quality_per_metric, scores

MEMBERS = {
    "gm-e0-o2": dict(eta=0.0, solver_order=2, use_corrector=True),
    "gm-e0-o2-nc": dict(eta=0.0, solver_order=2, use_corrector=False),
    "gm-e1-o2": dict(eta=1.0, solver_order=2, use_corrector=True),
    "gm-e1-o1": dict(eta=1.0, solver_order=1, use_corrector=True),
    "gm-e0.5-o2-nc": dict(eta=0.5, solver_order=2, use_corrector=False),
}

for _name, _settings in MEMBERS.items():
    register_sampler(_name, lambda config, steps, s=_settings: default_scheduler(config, **s, extrapolation_gain=1.0),
                     family="candidate", stochastic=_settings["eta"] != 0, learned_variance=True,
                     description=f"the default's placement with {_settings} and the extrapolation gain 1 (not told "
                                 f"the guidance scale: these settings are explicit)",
                     settings={**_settings, "extrapolation_gain": 1.0})

METRICS = ("fd", "fd_heldout")


def score(dirs: list[str]) -> str:
    records = [r for d in dirs for r in json.loads((Path(d) / "results.json").read_text())
               if r["sampler"] in MEMBERS]
    models = sorted({r["model"] for r in records})
    cells = sorted({(float(r["guidance_scale"]), int(r["nfe"])) for r in records})
    lines = ["| w | NFE | " + " | ".join(f"held out `{m}`" for m in models) + " | all models |",
             "|---:|---:|" + "---|" * (len(models) + 1)]
    for w, n in cells:
        quality = quality_per_metric([r for r in records if float(r["guidance_scale"]) == w and int(r["nfe"]) == n],
                                     METRICS)
        cands = [c for c in MEMBERS if any(key[0] == c for key in quality)]

        def pick(ms):
            ranking = scores(quality, cands, factors(ms, METRICS), [n])
            return f"`{ranking[0][0]}` {ranking[0][1]:.3f} (`{ranking[1][0]}` {ranking[1][1]:.3f})"
        lines.append(f"| {w:g} | {n} | " + " | ".join(pick([o for o in models if o != m]) for m in models)
                     + f" | {pick(models)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        print(score(sys.argv[2:]))
        sys.exit(0)
    sys.exit(cli.main(sys.argv[1:]))
