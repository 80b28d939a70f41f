"""A minimal "simulation" written against the ns3-gym protocol alone.

Raw pyzmq and the generated ``opengym_pb2`` only (not our codec, not
``emulation.opengym``), so that tests check our agent side against the wire
format rather than against our own encoder. It connects, announces a Box
observation and a Discrete action space, sends ``--steps`` states, ends with a
GameOver state, and reports what it got as one JSON object (to ``--result`` or
stdout).

Run as ``python tests/agents/minimal_sim.py --port P [...]`` with the
repository root on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import zmq

from agents.protocol import opengym_pb2 as pb

URL = "type.googleapis.com/ns3opengym."


def box_space(size: int, dtype: int) -> pb.SpaceDescription:
    desc = pb.SpaceDescription(type=pb.Box)
    desc.space.Pack(pb.BoxSpace(low=0.0, high=1e9, dtype=dtype, shape=[size]))
    return desc


def discrete_space(n: int) -> pb.SpaceDescription:
    desc = pb.SpaceDescription(type=pb.Discrete)
    desc.space.Pack(pb.DiscreteSpace(n=n))
    return desc


def state(step: int, size: int, dtype: int, game_over: bool) -> bytes:
    values = [(step + 1) * 0.001 * (j + 1) for j in range(size)]
    box = pb.BoxDataContainer(dtype=dtype, shape=[size])
    (box.doubleData if dtype == pb.DOUBLE else box.floatData).extend(values)
    msg = pb.EnvStateMsg(reward=0.5 * step, isGameOver=game_over, info=json.dumps({"sim_time_s": 0.015 * step}))
    if game_over:
        msg.reason = pb.EnvStateMsg.GameOver
    msg.obsData.type = pb.Box
    msg.obsData.data.Pack(box)
    return msg.SerializeToString()


def report(result: dict, path: str | None) -> None:
    text = json.dumps(result)
    if path is None:
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--obs-size", type=int, default=4)
    parser.add_argument("--n-actions", type=int, default=3)
    parser.add_argument("--float-obs", action="store_true", help="FLOAT obs box instead of DOUBLE")
    parser.add_argument("--die-after", type=int, default=None, help="exit 3 after this many steps")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--result", default=None, help="write the JSON report here instead of stdout")
    args = parser.parse_args()
    dtype = pb.FLOAT if args.float_obs else pb.DOUBLE

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(args.timeout_s * 1000))
    sock.connect(f"tcp://{args.host}:{args.port}")

    def exchange(data: bytes) -> bytes:
        sock.send(data)
        try:
            return sock.recv()
        except zmq.Again:  # a bounded wait is the point: never hang a test
            print(f"minimal_sim: no reply within {args.timeout_s} s", file=sys.stderr)
            sys.exit(2)

    init = pb.SimInitMsg(simProcessId=os.getpid(), wafShellProcessId=0)
    init.obsSpace.CopyFrom(box_space(args.obs_size, dtype))
    init.actSpace.CopyFrom(discrete_space(args.n_actions))
    ack = pb.SimInitAck.FromString(exchange(init.SerializeToString()))
    result = {"ack_done": ack.done, "ack_stop": ack.stopSimReq, "actions": [], "stopped_at": None}
    if ack.stopSimReq:
        report(result, args.result)
        return 0

    for step in range(args.steps):
        if args.die_after is not None and step == args.die_after:
            print(f"minimal_sim: dying on purpose after {step} steps", file=sys.stderr)
            sys.stderr.flush()
            os._exit(3)
        act = pb.EnvActMsg.FromString(exchange(state(step, args.obs_size, dtype, game_over=False)))
        if act.stopSimReq:
            result["stopped_at"] = step
            report(result, args.result)
            return 0
        if act.actData.type != pb.Discrete or act.actData.data.type_url != URL + "DiscreteDataContainer":
            print(f"minimal_sim: expected a Discrete action, got {act.actData}", file=sys.stderr)
            return 4
        action = pb.DiscreteDataContainer.FromString(act.actData.data.value).data
        if not 0 <= action < args.n_actions:
            print(f"minimal_sim: action {action} outside Discrete({args.n_actions})", file=sys.stderr)
            return 5
        result["actions"].append(action)

    final = pb.EnvActMsg.FromString(exchange(state(args.steps, args.obs_size, dtype, game_over=True)))
    result["final_stop"] = final.stopSimReq
    result["final_has_action"] = final.HasField("actData")
    report(result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
