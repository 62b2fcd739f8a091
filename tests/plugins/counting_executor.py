"""A user executor: the serial executor, counting how often it was built."""

from __future__ import annotations

from fedkit.executor import Executor
from fedkit.sim.factory import ExecutorRecipe, serial_executor

BUILT: list[ExecutorRecipe] = []


def counting(recipe: ExecutorRecipe) -> Executor:
    """Record the recipe, return a serial executor."""
    BUILT.append(recipe)
    return serial_executor(recipe)
