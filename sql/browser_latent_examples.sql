-- One latent's windows (train and test, every kind), strongest first within a kind.
SELECT split, kind, bin, ctx_id, start, peak_act, tokens, acts
FROM examples
WHERE layer = $layer AND sae = $sae AND latent = $latent
ORDER BY split DESC, kind, peak_act DESC, ctx_id
