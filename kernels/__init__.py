"""Fused kernels and their pure-torch references (installed as fastssl.kernels).

This package imports nothing else of fastssl: kernels are leaves of the dependency graph.
"""
from .augment import colour_augment
from .proto_xent import ProtoXent, proto_xent
from .ridge import ridge_solve
from .sim_xent import narrow, nt_xent, sim_xent, unit_rows

__all__ = ["ProtoXent", "colour_augment", "narrow", "nt_xent", "proto_xent", "ridge_solve", "sim_xent", "unit_rows"]
