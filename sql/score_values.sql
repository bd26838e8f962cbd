-- Per layer, SAE variant, explainer, scorer and source (real / control): the per-latent scores as lists, for the
-- summary's bootstrap intervals, and the mean accuracy per quantile bin; with the scorer's model, by which
-- the calibration is joined. Reads the `scores` view.
WITH bins AS (
    SELECT layer, sae, explainer, scorer, source, b.i AS bin, avg(b.acc) FILTER (NOT isnan(b.acc)) AS accuracy
    FROM scores, unnest(bin_accuracy) WITH ORDINALITY AS b(acc, i)
    GROUP BY ALL
),
per_bin AS (
    SELECT layer, sae, explainer, scorer, source, list(accuracy ORDER BY bin) AS bin_accuracy FROM bins GROUP BY ALL
)
SELECT
    layer, sae, explainer, scorer, scorer_model, source,
    count(*) AS n_latents,
    list(balanced_accuracy ORDER BY latent) AS balanced_accuracy,
    list(f1 ORDER BY latent) AS f1,
    coalesce(list(auc ORDER BY latent) FILTER (auc IS NOT NULL), []) AS auc,
    list(accuracy ORDER BY latent) AS accuracy,
    list(correlation ORDER BY latent) AS correlation,
    sum(n_examples) AS n_examples,
    sum(n_failures) AS n_failures,
    any_value(p.bin_accuracy) AS bin_accuracy
FROM scores LEFT JOIN per_bin AS p USING (layer, sae, explainer, scorer, source)
GROUP BY ALL
ORDER BY layer, sae, explainer, scorer, source DESC
