-- How many explained latents had an answer without an `Explanation:` line, and how many distinct texts the
-- parsed ones are (a small explainer often copies its worked example for many latents). Only the LLM's rows:
-- the token baseline and planted truths always parse. Reads the view `explanations` (one partition's rows).
WITH answers AS (
    SELECT * FROM explanations WHERE explainer = 'llm'
),
texts AS (
    SELECT lower(trim(explanation)) AS text, count(*) AS n
    FROM answers
    WHERE parsed
    GROUP BY ALL
)
SELECT
    (SELECT count(*) FROM answers) AS latents,
    (SELECT count(*) FROM answers WHERE NOT parsed) AS unparsed,
    (SELECT count(*) FROM texts) AS distinct_texts,
    (SELECT arg_max(text, n) FROM texts) AS most_common_text,
    (SELECT coalesce(max(n), 0) FROM texts) AS most_common_count
