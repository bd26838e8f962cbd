-- The stored reconstruction metrics of one SAE partition ($files: its sae_metrics file).
SELECT architecture, num_latents, k, fvu, l0, dead_fraction
FROM read_parquet($files)
