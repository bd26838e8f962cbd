-- Per latent, the tokens it fires on most often over the whole corpus (every firing of the latents partition,
-- not only the example windows): the token id, its firings, and the latent's firings in all, the $n commonest
-- tokens per latent. A firing counts where its activation reaches $min_fraction of the latent's largest, so
-- a latent's faint firings on common tokens do not drown the tokens it stands for.
-- $latents: the partition's Parquet files; $contexts: the contexts table's files.
WITH firings AS (
    SELECT l.latent, c.tokens[l.pos + 1] AS token, l.act
    FROM read_parquet($latents) AS l JOIN read_parquet($contexts) AS c USING (ctx_id)
),
strong AS (
    SELECT latent, token FROM firings
    QUALIFY act >= $min_fraction * max(act) OVER (PARTITION BY latent)
),
counts AS (
    SELECT latent, token, count(*) AS n, sum(count(*)) OVER (PARTITION BY latent) AS total
    FROM strong
    GROUP BY latent, token
)
SELECT latent::INTEGER AS latent, token::INTEGER AS token, n::BIGINT AS n, total::BIGINT AS total
FROM counts
QUALIFY row_number() OVER (PARTITION BY latent ORDER BY n DESC, token) <= $n
ORDER BY latent, n DESC, token
