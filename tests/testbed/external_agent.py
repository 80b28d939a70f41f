"""An agent process the testbed does not start, as a user would run one: a gymnasium loop per endpoint.

``python tests/testbed/external_agent.py --result R.json ENDPOINT...`` where each ENDPOINT is
``NAME:PORT:ACTION[:stop=K]``: serve one episode on 127.0.0.1:PORT answering ACTION (an int for a
Discrete space, a float for a Box) to every state; with ``stop=K`` close the Env after K steps (the
ns3-gym way to end an episode early: stopSimReq). Writes, per endpoint, the steps answered, the final
``info`` and whether the episode ended on the simulation's game-over state.
"""

from __future__ import annotations

import argparse
import json
import threading

import numpy as np
from gymnasium import spaces

from agents.env import OpenGymEnv


def serve(name: str, port: int, action: float, stop_after: int | None, results: dict) -> None:
    outcome: dict = {"steps": 0, "terminated": False, "info": None}
    results[name] = outcome
    env = OpenGymEnv(port=port, timeout_s=30, connect_timeout_s=120)
    try:
        _obs, info = env.reset()
        act = int(action) if isinstance(env.action_space, spaces.Discrete) else np.array([action])
        while stop_after is None or outcome["steps"] < stop_after:
            _obs, _reward, terminated, _truncated, info = env.step(act)
            outcome["steps"] += 1
            if terminated:
                outcome["terminated"] = True
                break
        outcome["info"] = info
    except Exception as exc:  # reported to the test, which asserts on it
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("endpoints", nargs="+")
    args = parser.parse_args()
    results: dict = {}
    threads = []
    for text in args.endpoints:
        name, port, action, *rest = text.split(":")
        stop_after = int(rest[0].removeprefix("stop=")) if rest else None
        thread = threading.Thread(target=serve, args=(name, int(port), float(action), stop_after, results))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    with open(args.result, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
