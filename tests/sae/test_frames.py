"""Tables leave Polars with the lake's exact Arrow schema (plain strings, 32-bit lists, UTC timestamps)."""

from sae.explanations.explainer import SCHEMA
from sae.frames import frame, to_arrow

from .explanations.test_checks import explanations


def test_a_table_round_trips_through_polars_with_its_schema():
    table = explanations(["a", None, "b"])
    shaped = frame(table).sort("latent", descending=True)
    back = to_arrow(shaped.select(reversed(shaped.columns)), SCHEMA)
    assert back.schema == SCHEMA  # columns back in the schema's order, strings not large_string
    assert back.to_pylist() == table.to_pylist()[::-1]
    assert frame(shaped) is shaped
