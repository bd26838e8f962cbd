-- The $n highest activations of every latent of one (layer, sae) partition, with their position.
SELECT latent, ctx_id, pos, act
FROM latents
WHERE layer = $layer AND sae = $sae
QUALIFY row_number() OVER (PARTITION BY latent ORDER BY act DESC, ctx_id, pos) <= $n
ORDER BY latent, act DESC, ctx_id, pos
