-- The scorers that scored latents of one variant.
SELECT DISTINCT scorer FROM scores WHERE layer = $layer AND sae = $sae ORDER BY scorer
