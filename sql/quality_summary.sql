-- Every variant of the lake side by side, neurons included. L0 and the dead fraction come from the
-- latent statistics over every cached token (they exist for neurons too); FVU and the spliced-in
-- cross-entropy from sae_quality.
WITH firing AS (
    SELECT layer, sae, sum(frequency) AS l0, avg(dead::INTEGER) AS dead_fraction
    FROM latent_stats
    GROUP BY layer, sae
)
SELECT q.layer, q.sae, q.architecture, q.num_latents, q.k,
       coalesce(f.l0, q.l0) AS l0, q.fvu, coalesce(f.dead_fraction, q.dead_fraction) AS dead_fraction,
       q.ce_clean, q.ce_increase, q.ce_increase_mean_ablated, q.ce_recovered
FROM sae_quality AS q
LEFT JOIN firing AS f USING (layer, sae)
ORDER BY q.layer, q.sae
