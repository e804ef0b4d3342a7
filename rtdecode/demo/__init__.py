"""``rtdecode demo``: a simulated single visit, end to end (see :mod:`rtdecode.demo.visit`)."""

from rtdecode.demo.settings import DemoSettings
from rtdecode.demo.visit import run_demo

__all__ = ["DemoSettings", "run_demo"]
