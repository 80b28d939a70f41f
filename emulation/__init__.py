"""The simulator side: ns-3 loading, native C++ models, topologies, traffic,
video applications, probes and the control points exposed over the wire.
"""
