"""The ns3-gym (OpenGym) wire protocol and the testbed's control-point layouts.

Both the simulation process and agent processes import this package: it is the
one thing the two sides share.
"""
