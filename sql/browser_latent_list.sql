-- One page of a variant's latents. Sorting and filtering are chosen by bound parameters only:
-- $sort: latent | frequency | max_act | score (the score of $sort_scorer by $sort_metric, one of the primary
-- metrics: balanced_accuracy | auc | accuracy | correlation); $descending;
-- $explained: all | yes | no (by $explainer's parsed explanations); $min_frequency, $max_frequency (NULL: none);
-- $limit, $offset. `total` is the count of rows passing the filter. Scores are $explainer's and those of the
-- scorers that read no explanation (explainer $no_explainer, the intruder).
WITH named AS (
    SELECT latent, any_value(explanation) AS explanation
    FROM explanations
    WHERE layer = $layer AND sae = $sae AND explainer = $explainer AND parsed
    GROUP BY latent
), scored AS (
    SELECT latent,
           list({'scorer': scorer, 'balanced_accuracy': balanced_accuracy, 'auc': auc, 'accuracy': accuracy,
                 'correlation': correlation} ORDER BY scorer) AS scores,
           any_value(CASE $sort_metric WHEN 'auc' THEN auc WHEN 'accuracy' THEN accuracy
                                       WHEN 'correlation' THEN correlation ELSE balanced_accuracy END)
               FILTER (WHERE scorer = $sort_scorer) AS sort_score
    FROM scores
    WHERE layer = $layer AND sae = $sae AND explainer IN ($explainer, $no_explainer) AND source = 'real'
    GROUP BY latent
), listed AS (
    SELECT s.latent, s.n_fired, s.frequency, s.max_act, s.mean_act, s.dead, n.explanation, c.scores,
           CASE $sort WHEN 'frequency' THEN s.frequency WHEN 'max_act' THEN s.max_act
                      WHEN 'score' THEN c.sort_score ELSE s.latent END::DOUBLE AS sort_key
    FROM latent_stats AS s
    LEFT JOIN named AS n USING (latent)
    LEFT JOIN scored AS c USING (latent)
    WHERE s.layer = $layer AND s.sae = $sae
      AND ($explained = 'all' OR ($explained = 'yes') = (n.explanation IS NOT NULL))
      AND ($min_frequency IS NULL OR s.frequency >= $min_frequency)
      AND ($max_frequency IS NULL OR s.frequency <= $max_frequency)
)
SELECT latent, n_fired, frequency, max_act, mean_act, dead, explanation, scores, count(*) OVER () AS total
FROM listed
ORDER BY CASE WHEN $descending THEN -sort_key ELSE sort_key END NULLS LAST, latent
LIMIT $limit OFFSET $offset
