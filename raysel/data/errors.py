"""The one exception type of raysel.data."""


class DataError(ValueError):
    """Bad or missing user data; the message names the file/field and what is allowed."""
