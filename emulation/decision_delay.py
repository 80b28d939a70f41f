"""When a control point's actions take effect: ``control.<point>.decision_delay``.

- ``none``: the simulation waits for the agent's answer and applies it at the
  state's own instant; the agent thinks in frozen time (ns3-gym's behaviour).
- a fixed delay ``d`` in ms: the state leaves at its instant ``t`` and the
  simulation runs on while the agent decides; a scheduled event at ``t + d``
  collects the action (waiting there only if it is not in yet) and applies it.
  Results show what an agent that needs ``d`` would do, and the agent's work
  overlaps the simulation's, so it also costs less wall time.
- ``measured``: each action takes effect after that decision's own wall-clock
  round trip, in simulated time. The delay is known only once the answer is
  in, so the simulation waits for it as with ``none`` (no overlap).

A control point whose agent is still deciding when its next tick comes skips
that tick (the AQM's p' holds), as a real controller busy with the previous
decision would. Every action is recorded (``actions.parquet``) with its
state's and its effect's instants and the wall time the simulation waited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emulation.opengym import OpenGymInterface

#: actions.parquet columns, in order (docs/run-directory.md).
ACTION_COLUMNS = ["control_point", "step", "state_time_s", "effect_time_s", "decision_delay_ms", "wait_us", "action"]


@dataclass
class Deferred:
    """A decision that takes effect ``delay_s`` of simulated time after its state: ``collect()``, called then,
    returns the action (receiving it from the agent if the simulation ran on meanwhile)."""

    delay_s: float
    collect: Callable[[], Any]


class DecisionTiming:
    """One control point's decision delay, and the record of every action it applied.

    ``value_of`` turns a wire action into the value recorded (the AQM's p', the ABR's quality).
    """

    def __init__(self, control_point: str, setting: str | float, iface: OpenGymInterface,
                 value_of: Callable[[Any], float] = float):
        self.control_point = control_point
        self.setting = setting
        self.fixed_s = None if isinstance(setting, str) else float(setting) / 1e3
        self.iface = iface
        self.value_of = value_of
        self._now_s: Callable[[], float] | None = None
        self._state_time_s = 0.0
        #: a state is out whose action has not taken effect yet
        self.pending = False
        self._rows: list[tuple[int, float, float, float, float]] = []

    def attach(self, sim) -> None:
        clock = sim.ns.Simulator
        self._now_s = lambda: clock.Now().GetSeconds()

    def ask(self, obs: Any, reward: float, info: dict) -> Any:
        """Show the agent the state of now: the action if it takes effect at once, else a :class:`Deferred`."""
        self._state_time_s = self._now_s()
        if self.fixed_s is not None:
            self.iface.send_state(obs, reward, info)
            self.pending = True
            return Deferred(self.fixed_s, self._receive)
        action = self.iface.step(obs, reward, info)
        if self.setting == "measured":
            self.pending = True
            return Deferred(self.iface.last_round_trip_s, lambda: self._took_effect(action))
        return self._took_effect(action)

    def _receive(self) -> Any:
        return self._took_effect(self.iface.receive_action())

    def _took_effect(self, action: Any) -> Any:
        self.pending = False
        self._rows.append((len(self._rows), self._state_time_s, self._now_s(), self.iface.last_round_trip_s,
                           self.value_of(action)))
        return action

    def table(self) -> pd.DataFrame:
        """The actions.parquet rows of this control point."""
        rows = np.array(self._rows, dtype=np.float64).reshape(-1, 5)
        state_s, effect_s = rows[:, 1], rows[:, 2]
        return pd.DataFrame({
            "control_point": self.control_point,
            "step": rows[:, 0].astype(np.int64),
            "state_time_s": state_s,
            "effect_time_s": effect_s,
            "decision_delay_ms": (effect_s - state_s) * 1e3,
            "wait_us": rows[:, 3] * 1e6,
            "action": rows[:, 4],
        }, columns=ACTION_COLUMNS)

    def summary(self) -> dict:
        """summary.json's delay entries: the setting, and the delays applied (ms of simulated time)."""
        delays_ms = np.array([(effect - state) * 1e3 for _, state, effect, _, _ in self._rows])
        stats = {"mean": None, "p50": None, "p99": None, "max": None}
        if delays_ms.size:
            stats = {"mean": float(delays_ms.mean()), "p50": float(np.percentile(delays_ms, 50)),
                     "p99": float(np.percentile(delays_ms, 99)), "max": float(delays_ms.max())}
        return {"decision_delay": self.setting, **{f"decision_delay_ms_{k}": v for k, v in stats.items()}}


def add_actions(sim, timings: list[DecisionTiming]) -> None:
    """Add control points' actions to the run's actions table (other components may add theirs too)."""
    frames = [t.table() for t in timings]
    if frames:
        earlier = [sim.tables["actions"]] if "actions" in sim.tables else []
        sim.tables["actions"] = pd.concat([*earlier, *frames], ignore_index=True)
