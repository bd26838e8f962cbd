"""The confined read-only connection, the relative views script, and `saelake sql` over them (real DuckDB)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.cli import main
from sae.lake import Lake
from sae.lake.access import LakeAccessError, open_readonly, read_only_statements, views_sql, write_views_script

# `saelake --lake` over the demo config: the override is what these tests query through.
cli_tests = pytest.mark.usefixtures("clean_cli_env")


def make_lake(root: Path) -> Lake:
    """A small lake: one partitioned table in two partitions and one unpartitioned table."""
    lake = Lake(root)
    for layer, texts in (("layers.1", ["commas", "years"]), ("layers.3", ["names"])):
        table = pa.table({"latent": list(range(len(texts))), "explanation": texts})
        lake.write_partition(table, "explanations", layer=layer, sae="topk-x2")
    lake.write_partition(pa.table({"ctx_id": [0, 1], "doc_id": [7, 7]}), "contexts")
    return lake


def explanations(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.sql("SELECT layer, latent, explanation FROM explanations ORDER BY ALL").fetchall()


EXPECTED = [("layers.1", 0, "commas"), ("layers.1", 1, "years"), ("layers.3", 0, "names")]


def test_views_sql_is_relative_and_covers_only_tables_with_files(tmp_path):
    lake = make_lake(tmp_path / "lake")
    script = views_sql(lake.root)
    assert str(tmp_path) not in script
    assert ("CREATE OR REPLACE VIEW explanations AS SELECT * FROM read_parquet('explanations/**/*.parquet', "
            "hive_partitioning = true, union_by_name = true);") in script
    assert "read_parquet('contexts/*.parquet', hive_partitioning = false" in script
    assert "latents" not in script  # no files, no view


def test_a_copied_lake_reads_its_own_files(tmp_path):
    original = make_lake(tmp_path / "lake")
    write_views_script(original.root)
    copy = tmp_path / "elsewhere" / "lake-copy"
    shutil.copytree(original.root, copy)
    shutil.rmtree(original.root)
    with open_readonly(copy) as con:
        assert explanations(con) == EXPECTED
        assert con.execute("SELECT count(*) FROM contexts").fetchone() == (2,)
    # any DuckDB client: the script's relative paths resolve through file_search_path
    with duckdb.connect() as con:
        con.execute(f"SET file_search_path = '{copy}'")
        con.execute((copy / "views.sql").read_text())
        assert explanations(con) == EXPECTED


def test_a_reader_in_the_middle_of_a_query_blocks_no_writer(tmp_path):
    """A notebook's connection takes no lock the pipeline needs: the views script and a partition are rewritten
    while a result is half read, and the next query sees the new partition."""
    lake = make_lake(tmp_path / "lake")
    with open_readonly(lake.root) as held:
        batches = held.sql("SELECT * FROM explanations").to_arrow_reader(1)
        batches.read_next_batch()
        target = write_views_script(lake.root)
        assert "VIEW explanations" in target.read_text()
        assert not list(lake.root.glob(".views.sql.*"))  # the temporary file was renamed into place
        table = pq.read_table(lake.files("explanations")[0])
        lake.write_partition(table.slice(0, 1), "explanations", "layers.3", "topk-x4")
    with open_readonly(lake.root) as con:
        assert con.execute("SELECT count(*) FROM explanations WHERE sae = 'topk-x4'").fetchone() == (1,)


def test_the_connection_reads_nothing_outside_the_lake_and_stays_locked(tmp_path):
    lake = make_lake(tmp_path / "lake")
    # a sibling folder whose name starts with the lake's: a prefix match must not admit it
    sibling = tmp_path / "lake-other"
    sibling.mkdir()
    (sibling / "secret.csv").write_text("a\n1\n")
    with open_readonly(lake.root) as con:
        for query in (f"SELECT * FROM read_csv('{sibling}/secret.csv')", "SELECT * FROM read_csv('/etc/passwd')",
                      f"SELECT * FROM read_text('{lake.root}/../lake-other/secret.csv')"):
            with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
                con.sql(query).fetchall()
        for setting in ("SET enable_external_access = true", "SET allowed_directories = ['/']",
                        "RESET lock_configuration"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                con.execute(setting)
        assert explanations(con) == EXPECTED


@pytest.mark.parametrize("query", ["COPY (SELECT * FROM explanations) TO 'x.parquet'", "ATTACH 'new.duckdb'",
                                   "SELECT 1; CREATE TABLE t AS SELECT 1", "SET threads = 1",
                                   "EXPORT DATABASE 'out'"])
def test_only_queries_pass_the_statement_check(query):
    with pytest.raises(LakeAccessError, match="not allowed: the lake is read-only"):
        read_only_statements(query)


@cli_tests
def test_saelake_sql_refuses_writes_and_outside_reads(tmp_path, capsys, monkeypatch):
    lake = make_lake(tmp_path / "lake")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cases = {
        f"COPY (SELECT * FROM explanations) TO '{tmp_path}/where.parquet'": "COPY statements are not allowed",
        f"COPY (SELECT * FROM explanations) TO '{lake.root}/explanations/evil.parquet'":
            "COPY statements are not allowed",
        "SELECT * FROM read_csv('/etc/passwd')": 'Cannot access file "/etc/passwd"',
        "SELECT * FROM read_text('/etc/shadow')": 'Cannot access file "/etc/shadow"',
    }
    for query, message in cases.items():
        assert main(["--lake", str(lake.root), "sql", query]) == 1
        captured = capsys.readouterr()
        assert message in captured.err
        assert "root:" not in captured.out  # nothing of /etc/passwd was printed
        if "read_" in query:
            assert "--allow-path PATH allows more" in captured.err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


@cli_tests
def test_saelake_sql_selects_and_allow_path_admits_a_file(tmp_path, capsys):
    lake = make_lake(tmp_path / "lake")
    assert main(["--lake", str(lake.root), "sql", "SELECT explanation FROM explanations WHERE layer = 'layers.3'"]) == 0
    assert "names" in capsys.readouterr().out
    extra = tmp_path / "labels.csv"
    extra.write_text("latent,label\n0,punctuation-marker\n")
    query = f"SELECT label FROM read_csv('{extra}')"
    assert main(["--lake", str(lake.root), "sql", query]) == 1
    assert "Cannot access file" in capsys.readouterr().err
    assert main(["--lake", str(lake.root), "sql", query, "--allow-path", str(extra)]) == 0
    assert "punctuation-marker" in capsys.readouterr().out


@cli_tests
def test_saelake_sql_on_a_missing_lake_or_allowed_path_says_what_to_do(tmp_path, capsys):
    assert main(["--lake", str(tmp_path / "nowhere"), "sql", "SELECT 1"]) == 1
    assert f"no lake at {tmp_path / 'nowhere'}" in capsys.readouterr().err
    lake = make_lake(tmp_path / "lake")
    assert main(["--lake", str(lake.root), "sql", "SELECT 1", "--allow-path", "/no/such"]) == 1
    assert "allowed path(s) do not exist: /no/such" in capsys.readouterr().err
