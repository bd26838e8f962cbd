-- Every explanation embedding of the lake (the main explainer's, one per explained latent).
SELECT layer, sae, latent, embedder, embedding
FROM explanation_embeddings
ORDER BY layer, sae, latent
