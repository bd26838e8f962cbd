-- The spliced-in loss of every variant (sae_quality: one row per variant; NULLs for planted ones).
SELECT layer, sae, ce_clean, ce_spliced, ce_increase, ce_recovered, fvu_spliced
FROM sae_quality
