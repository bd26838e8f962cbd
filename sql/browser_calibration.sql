-- Per scorer (and scorer model): whether a true explanation beats a wrong one on planted latents.
SELECT * FROM scorer_calibration ORDER BY scorer, scorer_model
