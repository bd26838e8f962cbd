-- Mean scores per explainer, scorer and source (real / control) of one partition's `partition_scores`.
SELECT explainer, scorer, source, count(*) AS latents,
       round(avg(balanced_accuracy), 3) AS balanced_accuracy,
       round(avg(auc), 3) AS auc,
       round(avg(accuracy), 3) AS accuracy,
       round(avg(correlation), 3) AS correlation,
       sum(n_failures) AS failed_windows
FROM partition_scores
GROUP BY ALL
ORDER BY explainer, scorer, source DESC
