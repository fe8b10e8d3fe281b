"""Sub-commands beyond run/list, each a thin layer over its module."""

from __future__ import annotations


def add_commands(sub):
    pass
