"""The one exception type of :mod:`raysel.models`."""

from __future__ import annotations


class ModelError(ValueError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""
