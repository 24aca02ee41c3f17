"""Integer codes shared by every backend (reference, Triton, CUDA).

The kernels receive these codes as ``int8`` tensors, one per selected feature or
direction, so a single launch can mix edits. The numeric values are part of the
kernel ABI: csrc/include/pysteer/modes.cuh and triton_kernels/ repeat them.
"""

from __future__ import annotations

import enum


class FeatureEdit(enum.IntEnum):
    """How a selected SAE feature ``f`` becomes ``f'`` given coefficient ``c``."""

    ADD = 0  # f' = f + c
    SET = 1  # f' = c            (a.k.a. clamp)
    SCALE = 2  # f' = c * f
    ABLATE = 3  # f' = 0           (c ignored)

    @classmethod
    def parse(cls, name: "str | int | FeatureEdit") -> "FeatureEdit":
        if isinstance(name, cls):
            return name
        if isinstance(name, int):
            return cls(name)
        key = str(name).strip().lower()
        aliases = {"add": cls.ADD, "set": cls.SET, "clamp": cls.SET, "scale": cls.SCALE,
                   "multiply": cls.SCALE, "ablate": cls.ABLATE, "zero": cls.ABLATE}
        if key not in aliases:
            raise ValueError(f"unknown feature edit {name!r}; expected one of "
                             f"add, set (clamp), scale, ablate")
        return aliases[key]


class DenseEdit(enum.IntEnum):
    """How a dense unit direction ``u`` with coefficient ``c`` changes a row ``h``."""

    ADD = 0  # h' = h + c * u
    PROJECT = 1  # h' = h + (c - h.u) * u    (c is z-bar, Stolfo et al.)

    @classmethod
    def parse(cls, name: "str | int | DenseEdit") -> "DenseEdit":
        if isinstance(name, cls):
            return name
        if isinstance(name, int):
            return cls(name)
        key = str(name).strip().lower()
        aliases = {"add": cls.ADD, "project": cls.PROJECT, "projection": cls.PROJECT}
        if key not in aliases:
            raise ValueError(f"unknown dense edit {name!r}; expected add or project")
        return aliases[key]
