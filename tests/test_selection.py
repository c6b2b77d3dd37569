"""Leave-one-model-out selection (skipstep.lab.selection)."""

import math

import pytest

from skipstep.lab.selection import render_selection, scores, select, step_count_composites


def _records(table, seeds=(100, 101)):
    """table: {(sampler, model, nfe): fd}; one record per seed (seed 101 is 10% worse: means are compared)."""
    out = []
    for (sampler, model, nfe), fd in table.items():
        for k, seed in enumerate(seeds):
            out.append({"sampler": sampler, "model": model, "nfe": nfe, "seed": seed,
                        "metrics": {"fd": fd * (1 + 0.1 * k)}})
    return out


TABLE = {
    ("A", "m1", 5): 1.0, ("B", "m1", 5): 2.0, ("C", "m1", 5): 1.5,
    ("A", "m2", 5): 1.0, ("B", "m2", 5): 3.0, ("C", "m2", 5): 1.2,
    ("A", "m3", 5): 9.0, ("B", "m3", 5): 1.0, ("C", "m3", 5): 2.0,
}


def test_each_fold_chooses_without_the_held_out_model():
    sel = select(_records(TABLE), ["A", "B", "C"], ["m1", "m2", "m3"], [5])
    by = {f.held_out: f for f in sel.folds}
    assert by["m3"].chosen == "A"  # best on m1 and m2
    assert by["m1"].chosen == "C"  # m2 and m3: A 9x behind on m3, C within 2x on both
    # the held-out model's numbers do not move its own fold
    worse = {**TABLE, ("C", "m1", 5): 100.0}
    assert {f.held_out: f.chosen for f in select(_records(worse), ["A", "B", "C"], ["m1", "m2", "m3"], [5]).folds
            }["m1"] == "C"
    assert sel.default == "C"  # geometric means over all three: A 2.08, B 1.82, C 1.53
    assert dict(sel.overall)["A"] == pytest.approx((1 * 1 * 9) ** (1 / 3))
    assert "held-out model" in render_selection(sel)


def test_missing_or_non_finite_cells():
    table = dict(TABLE)
    del table[("B", "m2", 5)]
    ranking = dict(scores({(s, m, n): v for (s, m, n), v in table.items()}, ["A", "B", "C"], ["m1", "m2"], [5]))
    assert ranking["B"] == math.inf and math.isfinite(ranking["A"])
    with pytest.raises(ValueError, match="at least two models"):
        select(_records(TABLE), ["A"], ["m1"], [5])
    with pytest.raises(ValueError, match="no candidate has a finite"):
        scores({("A", "m1", 5): math.inf}, ["A"], ["m1"], [5])


def test_several_metrics_are_factors_of_one_score_and_a_fold_leaves_out_all_of_a_model_s():
    records = _records(TABLE)
    for r in records:  # a second metric on which B is best on m1 and m2, A on m3
        r["metrics"]["fd_heldout"] = {"A": 4.0, "B": 1.0, "C": 4.0}[r["sampler"]] if r["model"] != "m3" else (
            {"A": 1.0, "B": 8.0, "C": 2.0}[r["sampler"]])
    sel = select(records, ["A", "B", "C"], ["m1", "m2", "m3"], [5], metric=["fd", "fd_heldout"])
    by = {f.held_out: f for f in sel.folds}
    # fold m3 (m1, m2 on both metrics): A (1, 1, 4, 4) 2.0, B (2, 3, 1, 1) 1.57, C (1.5, 1.2, 4, 4) 2.32
    assert by["m3"].chosen == "B" and by["m3"].score == pytest.approx((2 * 3) ** 0.25)
    assert dict(sel.overall)["A"] == pytest.approx((1 * 1 * 9 * 4 * 4 * 1) ** (1 / 6))
    assert sel.metric == "fd, fd_heldout"
    with pytest.raises(ValueError, match="at least one metric"):
        select(records, ["A"], ["m1", "m2"], [5], metric=[])


def test_step_count_composites_take_each_member_s_cells_and_rank_independently_of_the_set():
    table = {(s, m, n): v for m in ("m1", "m2") for (s, n), v in {
        ("D", 4): 1.0, ("D", 6): 1.0, ("D", 10): 3.0, ("D", 15): 4.0,   # deterministic: good early, worse late
        ("S", 4): 5.0, ("S", 6): 2.0, ("S", 10): 1.0, ("S", 15): 1.0}.items()}
    records = _records(table)
    composites = step_count_composites(records, "D", ["S"], [8, 12])
    by = {(r["sampler"], r["nfe"], r["seed"]): r["metrics"]["fd"] for r in composites}
    assert by[("below:8:D:S", 6, 100)] == 1.0 and by[("below:8:D:S", 10, 100)] == 1.0
    assert by[("below:12:D:S", 10, 100)] == 3.0 and by[("below:12:D:S", 15, 101)] == pytest.approx(1.1)
    # two thresholds, each one member's cell per (model, nfe, seed): half the records of the two members each
    assert len(composites) == 2 * (len(records) // 2)
    nfes = [4, 6, 10, 15]
    both = select(records + composites, ["D", "S", "below:8:D:S", "below:12:D:S"], ["m1", "m2"], nfes)
    assert both.default == "below:8:D:S" and dict(both.overall)["below:8:D:S"] == pytest.approx(1.0)
    alone = select(records + composites, ["D", "below:8:D:S", "below:12:D:S"], ["m1", "m2"], nfes)
    assert [c for c, _ in alone.overall] == [c for c, _ in both.overall if c != "S"]
    with pytest.raises(ValueError, match="thresholds"):
        step_count_composites(records, "D", ["S"], [0])
