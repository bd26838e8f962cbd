-- The first $n_train_random + $n_random distinct silent windows per latent over every round of candidates
-- (`random_parts`): the first $n_train_random go to the train split (for the contrastive explainer prompt),
-- the rest are the test split's non-activating windows.
WITH distinct_windows AS (
    SELECT * FROM random_parts
    QUALIFY row_number() OVER (PARTITION BY latent, ctx_id, start ORDER BY i) = 1
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY latent ORDER BY i) AS rank FROM distinct_windows
)
SELECT latent, CASE WHEN rank <= $n_train_random THEN 'train' ELSE 'test' END AS split, kind, bin, ctx_id,
       start, peak_act
FROM ranked
WHERE rank <= $n_train_random + $n_random
