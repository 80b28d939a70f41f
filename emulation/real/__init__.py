"""Real mode: real Linux hosts, with their own TCP stacks, crossing the simulated bottleneck.

The simulator runs in real time (``RealtimeSimulatorImpl``); every endpoint a
scenario marks ``real`` becomes a Linux network namespace whose only
interface is a TAP read and written by an ns-3 ``FdNetDevice`` on the
dumbbell, so real and simulated packets share the same DualPI2 queue.

- ``preflight``: what a machine must offer (privileges, ``/dev/net/tun``, ``ip``).
- ``netns``: anonymous namespaces with a TAP each (kernel-owned lifetime).
- ``endpoint``: the processes inside the namespaces (stdlib only): bulk TCP,
  ECT(1) UDP, an HTTP video server and a player (``bulk``, ``video``).
- ``realtime``: the real-time scheduler and its health (lateness).
- ``hosts``: the run's hosts, their processes and results (a simulation component).
"""
