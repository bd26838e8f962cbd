-- The scores of the export in long form, one row per (latent, explainer, column): the column is
-- <scorer>_<metric> for real explanations and <scorer>_control_<metric> for the control (no control F1).
CREATE OR REPLACE TEMP TABLE score_values AS
SELECT layer, sae, latent, explainer,
       scorer || CASE WHEN source = 'control' THEN '_control_' ELSE '_' END || metric AS name, value
FROM (
    SELECT layer, sae, latent, explainer, scorer, source, balanced_accuracy, f1, auc, accuracy, correlation
    FROM read_parquet($files, hive_partitioning = true, hive_types_autocast = false, union_by_name = true)
) UNPIVOT INCLUDE NULLS (value FOR metric IN (balanced_accuracy, f1, auc, accuracy, correlation))
WHERE source = 'real' OR metric <> 'f1'
