-- The tokens one latent's decoder direction promotes and suppresses most.
SELECT top_tokens, top_values, bottom_tokens, bottom_values
FROM latent_logits
WHERE layer = $layer AND sae = $sae AND latent = $latent
