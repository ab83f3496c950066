"""Schema-exact JSON from an engine that knows no schema: the server writes the fixed
parts of the value and runs the model only for the free ones (see :mod:`.writer`)."""

from .schema import SchemaReader, clamp_number, literal
from .writer import JSONWriter, Limits, StartRun, TextRun

__all__ = [
    "JSONWriter",
    "Limits",
    "SchemaReader",
    "StartRun",
    "TextRun",
    "clamp_number",
    "literal",
]
