"""Helpers shared by the tests: fixture locations, the generated clip's constants, the in-process CLI.

The documented weight-fill rules live beside this file (``realtracker_weights``, ``verifier_weights``, ...).
"""
from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pointtrack_cli.cli.app import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# The session clip of conftest.py: a textured plane translating by a sub-pixel velocity.
VELOCITY = (0.7, 0.3)  # pixels per frame
T, H, W = 24, 96, 128


def run_cli(args: list):
    """Run ``ptrack ARGS`` in-process; returns the click Result (exit_code, output)."""
    return CliRunner().invoke(app, [str(a) for a in args])
