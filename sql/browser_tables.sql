-- The lake's tables that have files (open_readonly makes a view only for those).
SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name
