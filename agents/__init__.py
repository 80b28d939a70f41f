"""Agent processes: they answer the simulation's control points over the wire.

Classic AQM and ABR controllers, the LLM policy wrapper, the gymnasium Env that
speaks ns3-gym's protocol, and the ``python -m agents serve`` process.
"""
