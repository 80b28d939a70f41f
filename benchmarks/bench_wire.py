"""Step round trip over the ns3-gym wire between two processes.

The simulation side is this process: an ``OpenGymInterface`` stepping an
AQM-sized observation (18 float64 values, a DOUBLE Box) against a Discrete(17)
action space, timing each send-state/receive-action exchange. The agent side
is a second process, one of:

- ``serve``: ``python -m agents serve --control aqm --policy fixed`` (the real agent loop);
- ``env``: a bare ``OpenGymEnv`` reset/step loop answering a constant action;
- ``ns3gym``: the baseline, an agent written the way ns3-gym's Python client
  works: raw protobuf, a gym space built afresh from the space description each
  step, ``Unpack`` into new containers, ``np.array`` of the repeated field;
- ``echo``: the floor, fixed reply bytes and no decoding (what the wire and the
  simulation side cost by themselves).

Run: ``.venv/bin/python benchmarks/bench_wire.py [--steps 5000]``. Prints p50/p99
in microseconds per agent kind and the baseline-to-ours ratio. Numbers, not
asserts: tests never time anything.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import zmq
from gymnasium import spaces

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere

from agents.protocol import opengym_pb2 as pb  # noqa: E402
from agents.protocol.control_points import AqmObservation  # noqa: E402
from emulation.opengym import OpenGymInterface  # noqa: E402

OBS_SIZE = len(AqmObservation.field_names())
OBS_SPACE = spaces.Box(0.0, np.inf, (OBS_SIZE,), np.float64)
ACT_SPACE = spaces.Discrete(17)
KINDS = {
    "serve": "agents.serve, fixed policy",
    "env": "bare OpenGymEnv loop",
    "ns3gym": "ns3-gym-style client (baseline)",
    "echo": "raw echo, no decoding (wire floor)",
}


# ---------------------------------------------------------------- agent processes


def run_env_agent() -> None:
    from agents.env import OpenGymEnv

    with OpenGymEnv(port=0, timeout_s=30) as env:
        print(env.port, flush=True)
        env.reset()
        while not env.step(3)[2]:
            pass


def _ns3gym_space(desc: pb.SpaceDescription) -> spaces.Space:
    """ns3-gym's ``_create_space``: a gym space from its description."""
    if desc.type == pb.Discrete:
        discrete = pb.DiscreteSpace()
        desc.space.Unpack(discrete)
        return spaces.Discrete(discrete.n)
    box = pb.BoxSpace()
    desc.space.Unpack(box)
    dtype = {pb.INT: np.int64, pb.UINT: np.uint64}.get(box.dtype, np.float64)
    return spaces.Box(low=box.low, high=box.high, shape=tuple(box.shape), dtype=dtype)


def run_ns3gym_agent() -> None:
    """An agent loop in the style of ns3-gym's ``ns3env.py`` (per-step space conversion and containers)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    init = pb.SimInitMsg()
    init.ParseFromString(sock.recv())
    sock.send(pb.SimInitAck(done=True, stopSimReq=False).SerializeToString())
    while True:
        state = pb.EnvStateMsg()
        state.ParseFromString(sock.recv())
        _ns3gym_space(init.obsSpace)
        action_space = _ns3gym_space(init.actSpace)
        box = pb.BoxDataContainer()
        state.obsData.data.Unpack(box)
        obs = np.array(box.doubleData if box.dtype == pb.DOUBLE else box.floatData)
        _ = (obs, state.reward, state.info)
        reply = pb.EnvActMsg()
        if state.isGameOver:
            reply.stopSimReq = True
            sock.send(reply.SerializeToString())
            break
        if isinstance(action_space, spaces.Discrete):
            data = pb.DiscreteDataContainer()
            data.data = 3
            reply.actData.type = pb.Discrete
            reply.actData.data.Pack(data)
        sock.send(reply.SerializeToString())
    sock.close()
    ctx.term()


def run_echo_agent() -> None:
    """The floor: answer each state with fixed bytes, decoding nothing."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    sock.recv()
    sock.send(pb.SimInitAck(done=True).SerializeToString())
    action = pb.EnvActMsg()
    action.actData.type = pb.Discrete
    action.actData.data.Pack(pb.DiscreteDataContainer(data=3))
    reply = action.SerializeToString()
    while True:
        state = sock.recv()
        if state == b"" or pb.EnvStateMsg.FromString(state).isGameOver:
            sock.send(pb.EnvActMsg(stopSimReq=True).SerializeToString())
            break
        sock.send(reply)
    sock.close()
    ctx.term()


def start_agent(kind: str) -> tuple[subprocess.Popen, int]:
    if kind == "serve":
        proc = subprocess.Popen([sys.executable, "-m", "agents", "serve", "--control", "aqm", "--policy", "fixed",
                                 "--port", "0"], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            found = re.search(r" on tcp://[^ ]+:(\d+)$", line.strip())
            if found:
                return proc, int(found.group(1))
        raise RuntimeError(f"agents serve exited with {proc.wait()} before binding")
    proc = subprocess.Popen([sys.executable, __file__, "--agent", kind], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            text=True)
    return proc, int(proc.stdout.readline())


# ---------------------------------------------------------------- simulation side


def measure(steps: int, warmup: int) -> dict[str, np.ndarray]:
    """Round trips (s) per agent kind of ``steps`` exchanges after ``warmup`` unmeasured ones.

    All agents run at once and the steps go round-robin across them, so load from
    other processes on the machine hits every kind alike and the ratios stay fair.
    """
    rng = np.random.default_rng(0)
    observations = rng.uniform(0.0, 1e6, (64, OBS_SIZE))
    agents = {kind: start_agent(kind) for kind in KINDS}
    gyms = {kind: OpenGymInterface("aqm", OBS_SPACE, ACT_SPACE, port=port, timeout_s=30)
            for kind, (_, port) in agents.items()}
    try:
        for gym in gyms.values():
            gym.connect()
        for k in range(warmup + steps):
            for gym in gyms.values():
                gym.step(observations[k % 64], 1.0, {"sim_time_s": 0.015 * k})
        for gym in gyms.values():
            gym.close(observations[0], 0.0, {}, reason="SimulationEnd")
    finally:
        for proc, _ in agents.values():
            proc.communicate(timeout=30)
    for kind, (proc, _) in agents.items():
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} agent exited with {proc.returncode}")
    return {kind: gym.round_trips_s[warmup:] for kind, gym in gyms.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--agent", choices=["env", "ns3gym", "echo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent is not None:
        {"env": run_env_agent, "ns3gym": run_ns3gym_agent, "echo": run_echo_agent}[args.agent]()
        return 0

    print(f"step round trip, {args.steps} steps after {args.warmup} warm-up, obs {OBS_SIZE} x float64, "
          f"action Discrete({ACT_SPACE.n})")
    print(f"{'agent':<36}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}")
    p50 = {}
    for kind, rtt_s in measure(args.steps, args.warmup).items():
        rtt_us = rtt_s * 1e6
        label = KINDS[kind]
        p50[kind] = float(np.percentile(rtt_us, 50))
        print(f"{label:<36}{p50[kind]:>10.1f}{np.percentile(rtt_us, 99):>10.1f}{rtt_us.mean():>10.1f}")
    print(f"p50 ratio, ns3-gym-style / agents.serve: {p50['ns3gym'] / p50['serve']:.2f}x; "
          f"ns3-gym-style / bare Env: {p50['ns3gym'] / p50['env']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
