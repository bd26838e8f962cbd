"""The explanations stage: an LLM explains each chosen latent from its train windows."""
