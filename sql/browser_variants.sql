-- Every layer x sae variant of the lake with its reconstruction figures (sae_metrics: one row per variant).
SELECT layer, sae, architecture, source, num_latents, k, fvu, l0, dead_fraction
FROM sae_metrics
ORDER BY layer, sae
