"""Where a sampler stands against the peers on several metrics at once (skipstep.lab.standing)."""

import pytest

from skipstep.lab.standing import count_dominated, render_standings, standings, summary_line


def _records(table):
    """table: {(sampler, nfe): [(fd, fd_heldout) per seed]} on one model."""
    return [{"model": "m", "sampler": s, "nfe": n, "seed": seed, "metrics": {"fd": a, "fd_heldout": b}}
            for (s, n), rows in table.items() for seed, (a, b) in enumerate(rows)]


TABLE = {
    ("ours", 5): [(1.0, 2.0), (1.2, 2.2)],
    ("fidelity", 5): [(0.5, 3.0), (0.7, 3.2)],     # better fd only: a trade-off, not a loss on both
    ("both", 5): [(0.8, 1.9), (1.3, 2.0)],         # better mean on both; on both metrics at once for seed 0 only
    ("worse", 5): [(2.0, 4.0), (2.0, 4.0)],
    ("ours", 10): [(0.3, 1.0)],
    ("fidelity", 10): [(0.2, 1.5)],
}


def test_a_peer_dominates_only_when_better_on_every_metric():
    rows = {r.nfe: r for r in standings(_records(TABLE), "ours")}
    five = rows[5]
    assert five.best_peer["fd"] == ("fidelity", pytest.approx(0.6))
    assert five.best_peer["fd_heldout"] == ("both", pytest.approx(1.95))
    assert five.ratio("fd") == pytest.approx(1.1 / 0.6)
    assert [d.peer for d in five.dominated_by] == ["both"]
    d = five.dominated_by[0]
    assert d.ratios == {"fd": pytest.approx(1.1 / 1.05), "fd_heldout": pytest.approx(2.1 / 1.95)}
    assert (d.seeds_ahead, d.seeds) == (1, 2)  # seed 1: fd 1.3 > 1.2
    assert rows[10].dominated_by == []  # behind in fd, ahead in fd_heldout
    assert count_dominated(list(rows.values())) == (1, 2)
    assert not five.leads and not rows[10].leads
    assert five.behind_everywhere and not rows[10].behind_everywhere
    assert summary_line(list(rows.values())) == (
        "2 cells: ahead of (or level with) the best peer on every metric in 0, a trade-off (ahead on one metric, "
        "behind on another) in 1, behind on every metric but to different peers in 0, one peer better on every "
        "metric at once in 1")
    split = standings(_records({("ours", 5): [(1.0, 1.0)], ("fid", 5): [(0.5, 2.0)], ("real", 5): [(2.0, 0.5)]}),
                      "ours")
    assert split[0].behind_everywhere and not split[0].dominated_by
    assert "behind on every metric but to different peers in 1" in summary_line(split)
    lead = standings(_records({("ours", 5): [(0.1, 0.1)], ("worse", 5): [(2.0, 4.0)]}), "ours")
    assert lead[0].leads and not lead[0].dominated_by


def test_the_peer_set_can_be_restricted_and_one_metric_is_plain_ranking():
    rows = standings(_records(TABLE), "ours", peers=["worse", "fidelity"])
    assert all(not r.dominated_by for r in rows)
    fd_only = {r.nfe: r for r in standings(_records(TABLE), "ours", metrics=["fd"])}
    assert {d.peer for d in fd_only[5].dominated_by} == {"fidelity", "both"}
    assert fd_only[5].dominated_by[0].peer == "fidelity"  # the strongest first
    with pytest.raises(ValueError, match="metric"):
        standings(_records(TABLE), "ours", metrics=[])


def test_render_lists_ratios_and_dominating_peers_per_cell():
    text = render_standings(standings(_records(TABLE), "ours"))
    assert "| `m` | 1.83 / 1.08 | 1.50 / 0.67 |" in text
    assert "both (1.05 / 1.08, 1/2) | - |" in text
    crowded = standings(_records({("ours", 5): [(1.0, 1.0)], **{(p, 5): [(0.5, 0.5)] for p in "abc"}}), "ours")
    assert "a (2.00 / 2.00, 1/1), b (2.00 / 2.00, 1/1) + 1 more |" in render_standings(crowded)
