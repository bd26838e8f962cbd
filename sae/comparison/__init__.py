"""The comparison stage: SAE variants compared across sizes and layers by explanation and decoder similarity."""
