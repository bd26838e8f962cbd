-- Per variant, explainer, scorer and source: the score means with their bootstrap intervals.
SELECT * FROM score_summary ORDER BY layer, sae, scorer, explainer, source DESC
