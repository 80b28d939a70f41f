"""The simulation process: ``python -m testbed.simproc --config C --out DIR``.

One simulation per process (ns-3's simulator is a process-wide singleton).
This module composes the run from a resolved configuration: the network and
flows (emulation), the video clients with their in-process ABR policies
(agents), a trace-driven bottleneck, and control points served over the wire.
It lives in testbed because it is the one place allowed to join emulation
and agents.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

import yaml

from emulation.config import SimulationConfig
from emulation.rundir import write_json
from testbed.ownership import mark_interrupted

log = logging.getLogger("testbed.simproc")


def build_components(config: SimulationConfig) -> list:
    components, decide = [], {}
    if config.bottleneck.trace:
        from emulation.video.link import TraceDrivenLink
        from emulation.video.traces import load_trace

        components.append(TraceDrivenLink(load_trace(config.bottleneck.trace), scale=config.bottleneck.trace_scale))
    if config.control.aqm is not None:
        from emulation.control_points import AqmControlPoint

        components.append(AqmControlPoint(config.control.aqm))
    if config.video:
        from agents.registry import make_policy
        from emulation.control_points import AbrControlGroup, AbrControlPoint
        from emulation.video.manifest import default_manifest, load_manifest
        from emulation.video.session import VideoComponent

        points = []
        for i, client in enumerate(config.all_video()):
            if config.control.abr is not None:
                manifest = load_manifest(client.manifest) if client.manifest else default_manifest()
                index = 0 if config.control.abr.one_endpoint else i
                point = AbrControlPoint(client.name, manifest.n_levels, config.control.abr, index)
                points.append(point)
                decide[client.name] = point.decide
            else:
                decide[client.name] = make_policy("abr", client.abr).act
        if points:
            components.append(AbrControlGroup(points))
        simulated = [v for v in config.all_video() if not config.is_real(v)]
        if simulated:
            factory = lambda name: make_policy("abr", name)  # noqa: E731
            components.append(VideoComponent(simulated, decide={v.name: decide[v.name] for v in simulated},
                                             policy_factory=factory))
    if any(config.is_real(e) for e in [*config.all_flows(), *config.all_video()]):
        from emulation.real.hosts import RealHosts

        # First, so it stops its hosts (and their ABR calls) before the control points close.
        components.insert(0, RealHosts(config, {v.name: decide[v.name] for v in config.all_video() if config.is_real(v)}))
    return components


def run(config_path: Path, out_dir: Path, wall_limit_s: float | None = None) -> int:
    """Run the simulation; on failure write ``sim-error.json`` (the runner reads it) and return 1.

    A simulation whose parent (the testbed runner) died, so that the kernel stopped it with the
    parent-death signal, records the run as interrupted itself: nobody else is left to.
    """
    from emulation.simulation import RunInterrupted, run_simulation

    parent_pid = os.getppid()
    config = SimulationConfig.model_validate(yaml.safe_load(Path(config_path).read_text()))
    try:
        summary = run_simulation(config, out_dir, components=build_components(config), wall_limit_s=wall_limit_s,
                                 parent_pid=parent_pid)
    except Exception as exc:
        write_json(out_dir / "sim-error.json", {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        print(f"simulation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if isinstance(exc, RunInterrupted) and os.getppid() != parent_pid:
            mark_interrupted(out_dir, detail=f"the testbed process that ran it (pid {parent_pid}) died; {exc}")
        return 1
    log.info("done: %.1f s simulated in %.1f s wall%s", summary["sim_end_s"], summary["wall_s"],
             f" (ended by {summary['ended_by']})" if summary.get("ended_by") else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.simproc", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="resolved config.yaml of the run")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--wall-limit", type=float, metavar="S",
                        help="stop after S seconds of wall-clock time, writing the tables gathered so far")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sim %(levelname)s %(message)s")
    return run(args.config, args.out, args.wall_limit)


if __name__ == "__main__":
    sys.exit(main())
