-- One latent's statistics.
SELECT * FROM latent_stats WHERE layer = $layer AND sae = $sae AND latent = $latent
