"""DualPI2's delay-utilisation frontier and the placement of other points against it, on constructed points;
traffic mixes and their draws."""

from __future__ import annotations

import pytest

from emulation.config import SimulationConfig
from testbed.aqm_cells import Cell, CellResult, Controller, parse_controller
from testbed.aqm_frontier import AqmPoint, Frontier, mean_point, place, score
from testbed.aqm_mix import Mix, MixGrid, check_disjoint, mix_scenario
from testbed.learn_aqm import FRONTIER_TARGETS_MS, AqmRecipe, seed_frontiers


def pt(delay_ms: float, util: float, l_p99_ms: float = 0.5, label: str = "") -> AqmPoint:
    return AqmPoint(delay_ms, util, l_p99_ms, label)


#: A sloped frontier: 5 ms -> 95 %, 10 ms -> 97 %, 20 ms -> 99 % (and a dominated 30 ms point).
SWEEP = [pt(5, 0.95, label="5ms"), pt(10, 0.97, label="10ms"), pt(20, 0.99, label="20ms"),
         pt(30, 0.985, label="30ms")]


def test_frontier_keeps_the_pareto_points_in_delay_order():
    front = Frontier.from_points(reversed(SWEEP))
    assert [p.label for p in front.points] == ["5ms", "10ms", "20ms"]
    # more delay for at most util_tol more utilisation adds nothing
    flat = Frontier.from_points([pt(5, 0.998), pt(15, 0.999), pt(30, 0.9985)])
    assert [p.c_delay_ms for p in flat.points] == [5]
    assert front.delay_at(0.96) == pytest.approx(7.5) and front.util_at(15) == pytest.approx(0.98)


def test_lower_delay_at_equal_utilisation_is_beyond():
    placed = place(pt(6, 0.97), Frontier.from_points(SWEEP))
    assert placed.verdict == "beyond"
    assert placed.delay_margin_ms == pytest.approx(4.0)  # the frontier needs 10 ms for 97 %
    assert placed.util_margin == pytest.approx(0.97 - 0.954)  # the frontier gives 95.4 % at 6 ms
    assert placed.score == pytest.approx(0.4)


def test_higher_utilisation_at_equal_delay_is_beyond():
    placed = place(pt(10, 0.985), Frontier.from_points(SWEEP))
    assert placed.verdict == "beyond" and placed.util_margin == pytest.approx(0.015)
    # beats the top point on both counts: beyond, though past the swept utilisation
    assert place(pt(19, 0.995), Frontier.from_points(SWEEP)).verdict == "beyond"


def test_dominated_points_are_inside_and_score_below_zero():
    front = Frontier.from_points(SWEEP)
    for p in (pt(12, 0.97), pt(10, 0.96), SWEEP[3]):
        placed = place(p, front)
        assert placed.verdict == "inside" and placed.score < 0
    assert place(pt(12, 0.97), front).delay_margin_ms == pytest.approx(-2.0)


def test_points_on_the_curve_and_trade_offs_beyond_its_ends():
    front = Frontier.from_points(SWEEP)
    assert place(pt(7.5, 0.96), front).verdict == "on"
    assert place(pt(10.05, 0.9702), front).verdict == "on"  # within tolerance
    below = place(pt(3, 0.93), front)  # less delay and less utilisation than every swept point
    assert below.verdict == "outside" and below.delay_margin_ms is None and below.util_margin is None
    assert below.score == pytest.approx(-0.4)  # 2 points of utilisation short, in units of 5
    assert place(pt(40, 0.995), front).verdict == "outside"


def test_beyond_needs_an_l_queue_no_worse():
    front = Frontier.from_points(SWEEP)
    worse = place(pt(6, 0.97, l_p99_ms=2.0), front)
    assert worse.verdict == "on" and not worse.l_p99_ok and worse.frontier_l_p99_ms == pytest.approx(0.5)
    assert worse.score < place(pt(6, 0.97), front).score
    assert place(pt(6, 0.97, l_p99_ms=0.6), front).l_p99_ok  # within 10 % + 0.1 ms


def test_a_saturated_frontier_is_one_point():
    """Every target fills the link: only lower delay at full utilisation beats it."""
    front = Frontier.from_points([pt(5, 0.998), pt(10, 0.998), pt(30, 0.999)])
    assert place(pt(3, 0.997), front).verdict == "beyond"
    assert place(pt(6, 0.998), front).verdict == "inside"
    assert place(pt(3, 0.98), front).verdict == "outside"
    assert score(pt(3, 0.997), front) == pytest.approx(0.4)


def test_sparse_targets_draw_chords_under_a_concave_frontier():
    """Utilisation climbs steeply over the first few ms of target and the frontier's segments lie under that
    curve: a point on the curve between sparse targets looks beyond them, and denser targets say otherwise."""

    def curve(delay_ms: float) -> AqmPoint:  # concave: 94 % at 1 ms, approaching 99.5 %
        return pt(delay_ms, 0.995 - 0.055 * 2.0 ** (-(delay_ms - 1.0)))

    between = pt(3.0, curve(3.0).utilisation - 0.002)  # a little below the curve at 3 ms
    assert place(between, Frontier.from_points([curve(t) for t in (2.0, 5.0, 10.0)])).verdict == "beyond"
    dense = Frontier.from_points([curve(t) for t in FRONTIER_TARGETS_MS])
    assert place(between, dense).verdict in ("on", "inside")
    assert min(FRONTIER_TARGETS_MS) <= 1.0 and sum(t <= 7.0 for t in FRONTIER_TARGETS_MS) >= 5
    assert AqmRecipe.model_fields["frontier_targets_ms"].default_factory() == list(FRONTIER_TARGETS_MS)


def _result(mix: Mix, target_ms: float, seed: int, delay_ms: float, util: float) -> CellResult:
    summary = {"queues": {"C": {"count": 100, "mean_ms": delay_ms}, "L": {"count": 100, "p99_ms": 0.5}},
               "utilisation": util}
    return CellResult(Cell(mix, Controller("dualpi2", target_ms=target_ms), seed), None, "ok", None, summary, 0.0)


def test_each_seed_has_its_own_frontier():
    """Seed 2 moves the whole frontier down by half a percent: a run of seed 2 that is on its own seed's
    frontier is inside the mean frontier, so the paired verdict reads it against its own."""
    mix = Mix(rate_mbps=50, rtt_ms=40, l4s_flows=1, classic_flows=1)
    results = [_result(mix, t, seed, t, u - shift) for seed, shift in ((1, 0.0), (2, 0.005))
               for t, u in ((2.0, 0.96), (5.0, 0.98), (10.0, 0.99))]
    fronts = seed_frontiers(results)
    assert set(fronts) == {(mix.name, 1), (mix.name, 2)}
    assert fronts[(mix.name, 2)].utils.tolist() == pytest.approx([0.955, 0.975, 0.985])
    run = pt(5.0, 0.975)  # seed 2's run, on seed 2's frontier
    assert place(run, fronts[(mix.name, 2)]).verdict == "on"
    mean_front = Frontier.from_points([mean_point([r.point for r in results if r.cell.controller.target_ms == t])
                                       for t in (2.0, 5.0, 10.0)])
    assert place(run, mean_front).verdict == "inside"


def test_controllers_parse_from_the_command_line():
    fast = parse_controller("pi2:target_ms=2:alpha_hz=0.32:beta_hz=6.4")
    assert fast == Controller("pi2", target_ms=2.0, alpha_hz=0.32, beta_hz=6.4)
    assert fast.label == "pi2-a0.32-b6.4-2ms" and fast.agent_args() == {"target_s": 0.002, "alpha_hz": 0.32,
                                                                         "beta_hz": 6.4}
    assert parse_controller("pie") == Controller("pie")
    assert parse_controller("pi2:grid=17").grid == 17
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_controller("pi2:target=2")
    with pytest.raises(ValueError, match="needs a number"):
        parse_controller("pi2:target_ms=two")
    with pytest.raises(ValueError, match="both PI2 gains"):
        parse_controller("pi2:alpha_hz=0.3")
    with pytest.raises(ValueError, match="controller kind"):
        parse_controller("codel")


def test_mean_point_and_summary_reading():
    summary = {"queues": {"C": {"count": 10, "mean_ms": 4.0}, "L": {"count": 5, "p99_ms": 0.3}},
               "utilisation": 0.99}
    p = AqmPoint.from_summary(summary, "x")
    assert p == pt(4.0, 0.99, 0.3, "x")
    assert mean_point([p, pt(6.0, 0.97, 0.5)]) == pt(5.0, 0.98, 0.4, "x")
    with pytest.raises(ValueError, match="no classic packets"):
        AqmPoint.from_summary({**summary, "queues": {**summary["queues"], "C": {"count": 0}}})


def test_mix_scenarios_validate_and_grids_draw_reproducibly():
    mix = Mix(rate_mbps=50, rtt_ms=40, l4s_flows=2, classic_flows=1, video=True, udp=True)
    data = mix_scenario(mix, duration_s=12, warmup_s=4, reward={"c_delay": 0.01})
    config = SimulationConfig.model_validate(data)
    assert config.name == mix.name == "mix-r50-rtt40-l2-c1-video-udp"
    assert [f.kind for f in config.all_flows()] == ["l4s", "l4s", "classic", "udp"]
    udp = config.all_flows()[-1]
    assert (udp.rate_mbps, udp.start_s, udp.stop_s) == (10.0, 4.0, 8.0)
    assert {v.transport for v in config.all_video()} == {"l4s", "classic"}
    assert data["control"]["aqm"]["reward"] == {"c_delay": 0.01}

    grid = MixGrid(rates_mbps=[20, 100], rtts_ms=[5, 80], l4s_flows=[1, 4], classic_flows=[1, 4], count=5, seed=3)
    drawn = grid.mixes()
    assert drawn == grid.mixes() and len({m.key for m in drawn}) == 5
    assert grid.model_copy(update={"seed": 4}).mixes() != drawn
    assert drawn[0] not in grid.mixes(exclude=[drawn[0]])
    with pytest.raises(ValueError, match="exceeds"):
        grid.model_copy(update={"count": 100}).mixes()
    with pytest.raises(ValueError, match="both a and b"):
        check_disjoint({"a": [mix], "b": [mix]})
