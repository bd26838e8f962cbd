"""The scoring stage: explanations scored on held-out test windows, with summary statistics."""
