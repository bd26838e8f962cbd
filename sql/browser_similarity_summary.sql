-- The similarity summary of every pair of variants.
SELECT * FROM similarity_summary ORDER BY layer_a, sae_a, layer_b, sae_b
