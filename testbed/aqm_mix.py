"""Traffic mixes over a DualPI2 bottleneck: the conditions AQM policies are trained and evaluated on.

A :class:`Mix` is one combination of bottleneck rate, base RTT, L4S (Prague) and classic
(Cubic, Not-ECT) bulk flows, and optionally two video clients (one over L4S, one classic,
RobustMPC in-process) and an unresponsive UDP flow (a fifth of the rate, on for the middle
third of the run, so the load steps up and down). :func:`mix_scenario` turns it into scenario
data that ``emulation.config.SimulationConfig`` validates, so every run of a mix is an ordinary
testbed run whose ``config.yaml`` replays it.

A :class:`MixGrid` is the training distribution: values per dimension, from which ``count``
distinct combinations are drawn with a seed. Evaluation and validation mixes are listed
explicitly and must not be among the training ones (:func:`check_disjoint`).
"""

from __future__ import annotations

import itertools

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from emulation.config import SimulationConfig

#: One-way delay of the bottleneck link itself; the flows' RTTs include it.
BOTTLENECK_DELAY_MS = 1.0
#: Rate of the UDP flow as a share of the bottleneck rate, and the part of the run it is on.
UDP_SHARE = 0.2
UDP_ON = (1 / 3, 2 / 3)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mix(_Strict):
    """One traffic condition at the bottleneck."""

    rate_mbps: float = Field(gt=0)
    rtt_ms: float = Field(ge=2 * BOTTLENECK_DELAY_MS)
    l4s_flows: int = Field(ge=0, le=64)
    classic_flows: int = Field(ge=0, le=64)
    video: bool = False
    udp: bool = False

    @property
    def name(self) -> str:
        """A path-safe name that says what the mix is: ``mix-r100-rtt10-l2-c2-video-udp``."""
        extras = ("-video" if self.video else "") + ("-udp" if self.udp else "")
        return f"mix-r{self.rate_mbps:g}-rtt{self.rtt_ms:g}-l{self.l4s_flows}-c{self.classic_flows}{extras}"

    @property
    def key(self) -> tuple:
        return (self.rate_mbps, self.rtt_ms, self.l4s_flows, self.classic_flows, self.video, self.udp)


def mix_scenario(mix: Mix, duration_s: float, warmup_s: float, seed: int = 1,
                 reward: dict | None = None) -> dict:
    """Scenario data of ``mix`` (validated here, so a bad mix fails before any run starts).

    ``reward`` sets the AQM control point's reward weights and targets
    (``emulation.config.AqmRewardWeights``) for runs where an agent owns p'.
    """
    flows: list[dict] = []
    if mix.l4s_flows:
        flows.append({"name": "l4s", "kind": "l4s", "count": mix.l4s_flows, "rtt_ms": mix.rtt_ms})
    if mix.classic_flows:
        flows.append({"name": "classic", "kind": "classic", "cc": "cubic", "count": mix.classic_flows,
                      "rtt_ms": mix.rtt_ms})
    if mix.udp:
        flows.append({"name": "udp", "kind": "udp", "rate_mbps": UDP_SHARE * mix.rate_mbps,
                      "start_s": UDP_ON[0] * duration_s, "stop_s": UDP_ON[1] * duration_s})
    video = []
    if mix.video:
        video = [{"name": "video-l4s", "transport": "l4s", "rtt_ms": mix.rtt_ms, "abr": "mpc"},
                 {"name": "video-classic", "transport": "classic", "rtt_ms": mix.rtt_ms, "abr": "mpc"}]
    data = {
        "name": mix.name,
        "description": f"AQM mix: {mix.model_dump()}",
        "seed": seed,
        "duration_s": duration_s,
        "bottleneck": {"rate_mbps": mix.rate_mbps, "delay_ms": BOTTLENECK_DELAY_MS, "queue": {"type": "dualpi2"}},
        "flows": flows,
        "video": video,
        "probes": {"interval_ms": 10, "warmup_s": warmup_s},
    }
    if reward:
        data["control"] = {"aqm": {"reward": dict(reward)}}
    SimulationConfig.model_validate(data)
    return data


class MixGrid(_Strict):
    """Values per dimension; ``count`` distinct combinations are drawn from their product with ``seed``."""

    rates_mbps: list[float] = Field(min_length=1)
    rtts_ms: list[float] = Field(min_length=1)
    l4s_flows: list[int] = Field(min_length=1)
    classic_flows: list[int] = Field(min_length=1)
    video: list[bool] = Field(default_factory=lambda: [False, True])
    udp: list[bool] = Field(default_factory=lambda: [False, True])
    count: int = Field(ge=1)
    seed: int = 0

    def mixes(self, exclude: list[Mix] = ()) -> list[Mix]:
        """The drawn combinations (never one of ``exclude``), in a stable order."""
        banned = {m.key for m in exclude}
        product = [Mix(rate_mbps=r, rtt_ms=t, l4s_flows=nl, classic_flows=nc, video=v, udp=u)
                   for r, t, nl, nc, v, u in itertools.product(self.rates_mbps, self.rtts_ms, self.l4s_flows,
                                                               self.classic_flows, self.video, self.udp)]
        product = [m for m in product if m.key not in banned and m.l4s_flows + m.classic_flows > 0]
        if self.count > len(product):
            raise ValueError(f"mix grid: count {self.count} exceeds the {len(product)} combinations it has")
        chosen = np.random.default_rng(self.seed).choice(len(product), size=self.count, replace=False)
        return [product[i] for i in sorted(chosen.tolist())]


def check_disjoint(named: dict[str, list[Mix]]) -> None:
    """Raise if a mix appears in two of the named sets (training, validation, evaluation)."""
    seen: dict[tuple, str] = {}
    for set_name, mixes in named.items():
        for mix in mixes:
            if mix.key in seen and seen[mix.key] != set_name:
                raise ValueError(f"mix {mix.name} is in both {seen[mix.key]} and {set_name}: the sets must be disjoint")
            seen[mix.key] = set_name
