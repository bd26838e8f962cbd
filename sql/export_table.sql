-- One lake table for the export, `layer` and `sae` first where it is partitioned by them ($partitioned).
-- Hive folder names stay strings (a variant named `123` is not a number).
SELECT * FROM read_parquet($files, hive_partitioning = $partitioned, hive_types_autocast = false,
                           union_by_name = true)
