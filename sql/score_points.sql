-- Per-latent scores for the summary's histograms (each scorer's headline metric is picked from these by
-- PRIMARY_METRIC in sae/scoring/metrics.py). Reads the `scores` view.
SELECT layer, sae, explainer, scorer, source, balanced_accuracy, auc, accuracy, correlation
FROM scores
ORDER BY layer, sae, explainer, scorer, source, latent
