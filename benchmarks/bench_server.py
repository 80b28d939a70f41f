"""Decisions per second of the policy server: many streams batched vs the same streams one at a time.

Two measurements with the same model (SmolLM2-135M truncated to ``--layers`` blocks, random encoders:
the cost of a decision does not depend on training):

* **in process**: ``llm.inference.decide_batch`` over ``--streams`` streams of one model, against
  each stream deciding alone in turn (what separate agents on one machine amount to);
* **over the wire**: a real ``python -m agents server`` process answering ``--streams`` control
  points (REQ sockets in threads speaking the ns3-gym protocol, as simulations do), with batching
  (``--max-batch streams``) against ``--max-batch 1``.

    .venv/bin/python -m benchmarks.bench_server [--streams 16] [--layers 6] [--decisions 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np
import torch
import zmq
from gymnasium import spaces

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agents.protocol import codec  # noqa: E402
from agents.protocol.control_points import AbrObservation  # noqa: E402
from llm.backbone import default_backbone_dir, load_backbone  # noqa: E402
from llm.inference import LlmDecider, decide_batch  # noqa: E402

FIELDS = AbrObservation.field_names(6)


def _observations(n: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [dict(zip(FIELDS, np.abs(rng.normal(1.0, 0.5, len(FIELDS))).tolist(), strict=True)) for _ in range(n)]


def in_process(streams: int, layers: int, decisions: int) -> tuple[float, float]:
    """(decisions/s one stream at a time, decisions/s batched) over ``decisions`` steps of every stream."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = load_backbone(default_backbone_dir(), layers=layers)
        model.save_pretrained(tmp)
        base = LlmDecider.untrained("abr", tmp, 6, obs_fields=FIELDS, device="cpu")
    results = []
    for batched in (False, True):
        deciders = [base.fork() for _ in range(streams)]
        obs = [_observations(decisions, seed=i) for i in range(streams)]
        t0 = time.perf_counter()
        for t in range(decisions):
            if batched:
                decide_batch(deciders, [o[t] for o in obs], [0.5] * streams)
            else:
                for d, o in zip(deciders, obs, strict=True):
                    d.decide(o[t], 0.5)
        results.append(streams * decisions / (time.perf_counter() - t0))
    return results[0], results[1]


def _client(port: int, decisions: int, seed: int, done: list) -> None:
    """One control point: SimInitMsg, then ``decisions`` states answered by the server, then game over."""
    obs_space = spaces.Box(0.0, np.inf, (len(FIELDS),), np.float64)
    act_space = spaces.Discrete(6)
    obs_codec = codec.SpaceCodec(obs_space)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.ROUTING_ID, f"bench-{seed}".encode())
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send(codec.build_sim_init(obs_space, act_space, sim_process_id=os.getpid(), waf_shell_process_id=0))
    sock.recv()
    rng = np.random.default_rng(seed)
    for _ in range(decisions):
        vec = np.abs(rng.normal(1.0, 0.5, len(FIELDS)))
        sock.send(codec.build_env_state(obs_codec, vec, 0.5, game_over=False, reason="SimulationEnd", info="{}"))
        sock.recv()
    sock.send(codec.build_env_state(obs_codec, vec, 0.0, game_over=True, reason="SimulationEnd", info="{}"))
    sock.recv()
    sock.close()
    done.append(seed)


def over_the_wire(streams: int, layers: int, decisions: int, max_batch: int, threads: int) -> float:
    """Decisions per second of a real server process answering ``streams`` concurrent control points."""
    import tempfile

    from testbed.runner import free_port

    with tempfile.TemporaryDirectory() as tmp:
        load_backbone(default_backbone_dir(), layers=layers).save_pretrained(tmp)
        port = free_port()
        env = {**os.environ, "TESTBED_LLM_BACKBONE": tmp, "OMP_NUM_THREADS": str(threads)}
        server = subprocess.Popen([sys.executable, "-m", "agents", "server", "--abr", "llm", "--port", str(port),
                                   "--streams", str(streams), "--max-batch", str(max_batch), "--max-wait-ms", "3"],
                                  env=env, stderr=subprocess.DEVNULL)
        try:
            # one warm-up stream loads the model before the clock starts
            _client(port, 2, seed=10_000, done=[])
            done: list[int] = []
            workers = [threading.Thread(target=_client, args=(port, decisions, i, done)) for i in range(streams - 1)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - t0
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
    return (streams - 1) * decisions / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--layers", type=int, default=6, help="SmolLM2 blocks kept")
    parser.add_argument("--decisions", type=int, default=60, help="decisions per stream")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    alone, batched = in_process(args.streams, args.layers, args.decisions)
    print(f"in process, {args.streams} streams, SmolLM2 first {args.layers} blocks, {args.threads} threads:")
    print(f"  one at a time {alone:8.1f} decisions/s   batched {batched:8.1f} decisions/s   ratio {batched / alone:.2f}x")
    # the wire: the server process with and without batching (one stream warms it up, the rest are timed)
    sequential = over_the_wire(args.streams + 1, args.layers, args.decisions, 1, args.threads)
    together = over_the_wire(args.streams + 1, args.layers, args.decisions, args.streams, args.threads)
    print(f"over the wire, {args.streams} concurrent control points:")
    print(f"  max-batch 1  {sequential:8.1f} decisions/s   max-batch {args.streams} {together:8.1f} decisions/s   "
          f"ratio {together / sequential:.2f}x")


if __name__ == "__main__":
    main()
