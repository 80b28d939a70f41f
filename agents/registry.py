"""Policy names -> factories, per control kind.

The CLI and the orchestrator pick policies by name (``--policy pi2``). ABR
classes are imported only when asked for, so the AQM side works without them;
other policies (the LLM agent) join with :func:`register`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from agents.aqm import FixedProbability, Pi2Controller, PieController
from agents.policy import Policy, check_control

PolicyFactory = Callable[..., Policy]


def _lazy(module: str, attribute: str) -> PolicyFactory:
    """A factory that imports ``module.attribute`` on first use."""

    def factory(**kwargs: Any) -> Policy:
        return getattr(importlib.import_module(module), attribute)(**kwargs)

    factory.__name__ = f"make_{attribute}"
    factory.__qualname__ = factory.__name__
    return factory


def _llm(control: str) -> PolicyFactory:
    """The LLM agent for ``control``; torch and transformers load only when it is asked for.

    Its fallback policy (``fallback=NAME``) is built here, so the LLM agent needs no registry of its own.
    """

    def factory(**kwargs: Any) -> Policy:
        from agents.llm_agent import DEFAULT_FALLBACK, LlmPolicy

        name = kwargs.pop("fallback", None) or DEFAULT_FALLBACK[control]
        fallback = make_policy(control, name) if kwargs.get("deadline_ms") not in (None, "", "none") else None
        return LlmPolicy(control, fallback=fallback, **kwargs)

    factory.__name__ = f"make_llm_{control}"
    return factory


_FACTORIES: dict[str, dict[str, PolicyFactory]] = {
    "aqm": {"pi2": Pi2Controller, "pie": PieController, "fixed": FixedProbability, "llm": _llm("aqm")},
    "abr": {
        "bba": _lazy("agents.abr", "BBA"),
        "rate": _lazy("agents.abr", "RateBased"),
        "mpc": _lazy("agents.abr", "RobustMPC"),
        "bola": _lazy("agents.abr", "BolaE"),
        "llm": _llm("abr"),
    },
}


#: Policy names become parts of run directory names.
POLICY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def register(control: str, name: str, factory: PolicyFactory, *, replace: bool = False) -> None:
    """Make ``name`` available for ``control``; refuses to shadow an existing name unless ``replace``."""
    if not POLICY_NAME.fullmatch(name):
        raise ValueError(f"policy name {name!r}: use letters, digits, '.', '_' and '-', not starting with '.' "
                         "(it becomes part of a run directory's name)")
    known = _FACTORIES[check_control(control)]
    if name in known and not replace:
        raise ValueError(f"{control} policy {name!r} is already registered (pass replace=True to override)")
    known[name] = factory


def policy_names(control: str) -> list[str]:
    return sorted(_FACTORIES[check_control(control)])


def make_policy(control: str, name: str, **kwargs: Any) -> Policy:
    """Build the policy registered as ``name`` for ``control`` with ``kwargs`` (e.g. ``p_prime=0.1``)."""
    known = _FACTORIES[check_control(control)]
    if name not in known:
        raise ValueError(f"unknown {control} policy {name!r}; known: {', '.join(sorted(known))}")
    try:
        return known[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build {control} policy {name!r} with {kwargs}: {exc}") from exc
