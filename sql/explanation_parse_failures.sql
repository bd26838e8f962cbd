-- How many explained latents had an answer without an `Explanation:` line, and how many distinct texts the
-- parsed ones are (a small explainer often copies its worked example for many latents).
-- Reads the view `explanations` (one partition's rows).
WITH texts AS (
    SELECT lower(trim(explanation)) AS text, count(*) AS n
    FROM explanations
    WHERE parsed
    GROUP BY ALL
)
SELECT
    (SELECT count(*) FROM explanations) AS latents,
    (SELECT count(*) FROM explanations WHERE NOT parsed) AS unparsed,
    (SELECT count(*) FROM texts) AS distinct_texts,
    (SELECT arg_max(text, n) FROM texts) AS most_common_text,
    (SELECT coalesce(max(n), 0) FROM texts) AS most_common_count
