-- Every SAE variant of the lake side by side, neurons included.
SELECT layer, sae, architecture, num_latents, k, l0, fvu, dead_fraction,
       ce_clean, ce_increase, ce_increase_mean_ablated, ce_recovered
FROM sae_quality
ORDER BY layer, sae
