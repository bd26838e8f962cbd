-- The first $n_random distinct silent windows per latent over every round of candidates (`random_parts`).
WITH distinct_windows AS (
    SELECT * FROM random_parts
    QUALIFY row_number() OVER (PARTITION BY latent, ctx_id, start ORDER BY i) = 1
)
SELECT latent, split, kind, bin, ctx_id, start, peak_act
FROM distinct_windows
QUALIFY row_number() OVER (PARTITION BY latent ORDER BY i) <= $n_random
