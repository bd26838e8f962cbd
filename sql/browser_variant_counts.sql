-- Latents and dead latents per variant, from latent_stats.
SELECT layer, sae, count(*) AS n_latents, count(*) FILTER (WHERE dead) AS n_dead,
       count(*) FILTER (WHERE NOT dead) AS n_alive
FROM latent_stats
GROUP BY ALL
