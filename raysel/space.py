"""Search-space distributions: what a spec's ``search_space`` entries parse into.

    lr: {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}   # -> LogUniform
    lr: 1.0e-4                                                   # a fixed value stays as it is
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import Field

from raysel.inputs import Strict as _Strict

DISTRIBUTIONS = ("uniform", "loguniform", "int", "categorical")


class Uniform(_Strict):
    distribution: Literal["uniform"]
    low: float
    high: float


class LogUniform(_Strict):
    distribution: Literal["loguniform"]
    low: float
    high: float


class IntRange(_Strict):
    distribution: Literal["int"]
    low: int
    high: int  # inclusive, as in Optuna
    step: int = 1
    log: bool = False


class Categorical(_Strict):
    distribution: Literal["categorical"]
    choices: list[Any]


Distribution = Annotated[
    Union[Uniform, LogUniform, IntRange, Categorical], Field(discriminator="distribution")
]


def is_distribution(value: Any) -> bool:
    return isinstance(value, (Uniform, LogUniform, IntRange, Categorical))


def distribution_bounds(dist: Any) -> list[Any]:
    """Representative values of a distribution (its ends or choices), used to validate it."""
    if isinstance(dist, Categorical):
        return list(dist.choices)
    return [dist.low, dist.high]


def grid_values(dist: Any) -> list[Any]:
    """The values a grid protocol enumerates for one search-space entry."""
    if isinstance(dist, Categorical):
        return list(dist.choices)
    if isinstance(dist, IntRange) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    raise ValueError("only categorical and int distributions can be enumerated on a grid")



def parse_space_value(value: Any) -> Any:
    """A search-space entry: a distribution (a mapping with ``distribution:``) or a fixed value."""
    if isinstance(value, dict) and "distribution" in value:
        return pydantic.TypeAdapter(Distribution).validate_python(value)
    return value
