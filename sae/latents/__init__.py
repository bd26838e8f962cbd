"""The latents stage: one forward pass of the subject model caches activations and SAE latents."""
