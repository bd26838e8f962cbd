"""The export stage: the lake written as a Hugging Face dataset folder."""
