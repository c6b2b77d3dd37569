"""The noise probe of ``skipstep tune`` on every zoo model at NFE 3-6 (docs/results.md, twelfth round): the
default's few-step member on its own grid at constant eta 0, 0.5 and 1, from tune's fit and validation seeds'
common random numbers (0 and 1, 500 samples), scored by the pixel Fréchet distance to the 500-sample ancestral
reference set: the probe itself (:func:`skipstep.lab.tune_noise_probe.noise_probe`, eta 0 and 1, its verdict), and
eta 0.5 beside it.

    python benchmarks/noise_probe_table.py [MODEL ...]      # default: all eleven model views
"""

import copy
import sys

from skipstep.lab.models import apply_clip_mode, load_model
from skipstep.lab.tune_grids import default_rule_grid, model_plain_spacings, tune_grid
from skipstep.lab.tune_noise_probe import noise_probe
from skipstep.lab.tune_objectives import DistributionObjective, ancestral_reference
from skipstep.lab.tune_search import CommonNoise, draw_samples, ramp, resolve_base

VIEWS = [("digits", None), ("digits-eps-b", None), ("digits-eps-c", None), ("digits-lv", None),
         ("digits-lv-b", None), ("digits-vzsnr", None), ("digits-flow", None), ("digits-flow-b", None),
         ("digits-cfg", 1.0), ("digits-cfg-b", 1.0), ("digits-cfg-c", 1.0)]
SEEDS, NUM_SAMPLES = (0, 1), 500


def main(names) -> int:
    views = [v for v in VIEWS if not names or v[0] in names]
    print("| model | NFE | pixel FD at eta 0 / 0.5 / 1, seed 0 ; seed 1 | eta 1 / eta 0 | probe |")
    print("|---|---:|---|---|---|")
    for name, scale in views:
        loaded = copy.copy(load_model(name).at_guidance(scale))
        apply_clip_mode(loaded, "model")
        base = resolve_base("default", flow=loaded.regime == "flow")
        grid = tune_grid(loaded)
        objective = DistributionObjective("pixel-fd", loaded, ancestral_reference(loaded, NUM_SAMPLES)[0])
        for n in (3, 4, 5, 6):
            ts = default_rule_grid(model_plain_spacings(loaded, grid, n))
            probe = noise_probe(loaded, ts, base, objective, SEEDS, NUM_SAMPLES)
            half = {str(s): objective(draw_samples(loaded, None, ts, ramp(0.5, 0.5, n), base,
                                                   CommonNoise(s, NUM_SAMPLES, loaded.sample_shape))) for s in SEEDS}
            rows = [(probe["scores"][k]["eta 0"], half[k], probe["scores"][k]["eta 1"]) for k in half]
            print(f"| `{name}`{'' if scale is None else f', w = {scale:g}'} | {n} | "
                  + " ; ".join(" / ".join(f"{v:.3g}" for v in row) for row in rows)
                  + " | " + ", ".join(f"{probe['ratios'][k]:.2f}" for k in half)
                  + f" | {'noisy' if probe['noisy'] else 'quiet'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
