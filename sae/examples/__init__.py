"""The examples stage: per latent, train windows for the explainer and disjoint test windows for scoring."""
