-- Every score row (view `score_rows`) with its scorer's calibration verdict (registered table `calibration`,
-- the scorer_calibration table); null where the scorer was not calibrated.
SELECT s.*, c.calibrated
FROM score_rows AS s LEFT JOIN (SELECT scorer, scorer_model, calibrated FROM calibration) AS c
    USING (scorer, scorer_model)
ORDER BY s.layer, s.sae, s.latent, s.explainer, s.scorer, s.source DESC
