"""The contract every policy (classic, LLM, AQM or ABR) offers to the agent loop.

A policy answers one observation of its control point with one action: the
base probability p' (float in [0, 1]) for ``aqm``, a quality index (int) for
``abr``. The same object serves the wire (``agents.serve``) and offline
simulators, so it must not assume which one drives it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agents.protocol.control_points import AbrObservation, AqmObservation

#: The control kinds a policy can serve.
CONTROLS = ("aqm", "abr")


@runtime_checkable
class Policy(Protocol):
    """What the agent loop needs from a policy.

    ``reset`` is called before each episode. A policy that learns online may
    also define ``observe_reward(reward: float) -> None``: the loop calls it,
    when present, with the reward that arrived with each observation (the
    reward for the previous action) before ``act``; see :func:`observe_reward`. A policy with work
    that needs no state yet may define ``prepare() -> None``, called once its answer is out, while the
    simulation runs on; see :func:`prepare_next`.
    """

    name: str
    control: str

    def reset(self) -> None: ...

    def act(self, obs: AqmObservation | AbrObservation) -> float | int: ...


def observe_reward(policy: Policy, reward: float) -> None:
    """Hand ``reward`` to the policy if it wants rewards (the method is optional)."""
    hook = getattr(policy, "observe_reward", None)
    if hook is not None:
        hook(reward)


def prepare_next(policy: Policy) -> None:
    """Let the policy work ahead for its next decision (the method is optional)."""
    hook = getattr(policy, "prepare", None)
    if hook is not None:
        hook()


def check_control(control: str) -> str:
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {', '.join(CONTROLS)}, got {control!r}")
    return control
