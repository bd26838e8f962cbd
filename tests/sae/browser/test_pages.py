"""The browser's pages over a real lake, through Starlette's TestClient (the real app, in process)."""

from __future__ import annotations

import os
import re
import shutil

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from sae.config import NO_EXPLAINER
from sae.lake import Lake

from .conftest import LAYERS, SAE, make_app


@pytest.fixture(scope="module")
def client(browser_lake):
    return TestClient(make_app(*browser_lake))


def latent_of(cfg, root, explanation_word: str, explainer: str = "truth") -> int:
    table = pq.read_table(Lake(root).files("explanations", LAYERS[0], SAE)[0]).to_pylist()
    return next(r["latent"] for r in table if r["explainer"] == explainer and explanation_word in r["explanation"])


def test_overview_lists_every_variant_with_scores_and_calibration(client, browser_lake):
    page = client.get("/")
    assert page.status_code == 200
    for layer in LAYERS:
        assert f'href="/variant/{layer}/{SAE}"' in page.text
    assert "embedding" in page.text  # the scorer present in the scores
    with duckdb.connect() as con:
        calibrated = con.sql(f"SELECT calibrated FROM '{browser_lake[1]}/scorer_calibration/*.parquet' "
                             "WHERE scorer = 'embedding'").fetchall()[0][0]
    label = {True: "calibrated", False: "UNCALIBRATED", None: "unchecked"}[calibrated]
    assert f'class="flag {"ok" if calibrated else "bad" if calibrated is False else "unchecked"}"' in page.text
    assert f">{label}</span>" in page.text


def test_latent_list_sorts_filters_and_pages(client, browser_lake):
    by_latent = client.get(f"/variant/{LAYERS[0]}/{SAE}?sort=latent&order=asc&per_page=3")
    ids = [int(i) for i in re.findall(rf'href="/latent/{LAYERS[0]}/{SAE}/(\d+)"', by_latent.text)]
    assert ids == [0, 1, 2]
    second = client.get(f"/variant/{LAYERS[0]}/{SAE}?sort=latent&order=asc&per_page=3&page=2")
    assert [int(i) for i in re.findall(rf'href="/latent/{LAYERS[0]}/{SAE}/(\d+)"', second.text)] == [3, 4, 5]
    with duckdb.connect() as con:
        expected = [r[0] for r in con.sql(
            f"SELECT latent FROM '{browser_lake[1]}/latent_stats/layer={LAYERS[0]}/sae={SAE}/*.parquet' "
            "ORDER BY frequency DESC, latent").fetchall()]
    by_frequency = client.get(f"/variant/{LAYERS[0]}/{SAE}?sort=frequency&order=desc&per_page=200")
    assert [int(i) for i in re.findall(rf'href="/latent/{LAYERS[0]}/{SAE}/(\d+)"', by_frequency.text)] == expected
    by_score = client.get(f"/variant/{LAYERS[0]}/{SAE}?sort=score:embedding&order=desc")
    assert by_score.status_code == 200
    rare = client.get(f"/variant/{LAYERS[0]}/{SAE}?min_frequency=2")  # a frequency is at most 1
    assert "0 latents match" in rare.text


def test_latent_page_shows_every_section(client, browser_lake):
    cfg, root = browser_lake
    latent = latent_of(cfg, root, "masculine")
    page = client.get(f"/latent/{LAYERS[0]}/{SAE}/{latent}")
    assert page.status_code == 200
    text = page.text
    assert "the masculine pronouns he, him and his" in text  # the ground truth, with its explainer
    assert "<svg class=\"histogram\"" in text and 'class="quantile"' in text
    assert "Top activations" in text and "Silent windows" in text and "Hard negatives" in text
    assert "Not available: planted has no decoder directions" in text
    assert f'href="/latent/{LAYERS[1]}/{SAE}/{latent}"' in text  # its match at the other layer
    # Histogram bars count every activation of the latent.
    counts = sum(int(c) for c in re.findall(r'data-count="(\d+)"', text))
    stats = pq.read_table(Lake(root).files("latent_stats", LAYERS[0], SAE)[0]).to_pylist()
    assert counts == next(s["n_fired"] for s in stats if s["latent"] == latent)


def test_highlighted_tokens_carry_the_stored_activations(client, browser_lake):
    cfg, root = browser_lake
    latent = latent_of(cfg, root, "masculine")
    text = client.get(f"/latent/{LAYERS[0]}/{SAE}/{latent}").text
    stored = {(r["ctx_id"], r["start"]): r["acts"] for r in pq.read_table(
        Lake(root).files("examples", LAYERS[0], SAE)[0]).to_pylist() if r["latent"] == latent}
    windows = re.findall(r'<span class="window">(.*?)</span><small class="where muted">ctx (\d+):(\d+)<', text, re.S)
    assert len(windows) == len(stored)
    for markup, ctx_id, start in windows:
        acts = [float(a) for a in re.findall(r'data-act="([^"]+)"', markup)]
        assert acts == [float(a) for a in stored[(int(ctx_id), int(start))]]
    first = windows[0][0]
    acts = [float(a) for a in re.findall(r'data-act="([^"]+)"', first)]
    alphas = [float(a) for a in re.findall(r"rgba\(255, 111, 0, ([0-9.]+)\)", first)]
    stats = pq.read_table(Lake(root).files("latent_stats", LAYERS[0], SAE)[0]).to_pylist()
    max_act = next(s["max_act"] for s in stats if s["latent"] == latent)
    assert alphas == pytest.approx([a / max_act for a in acts if a > 0], abs=1e-3)


def test_search_by_meaning_keyword_and_token(client, browser_lake):
    cfg, root = browser_lake
    masculine = latent_of(cfg, root, "masculine")
    query = "words referring to a male person"  # no word in common with its explanation
    page = client.get("/search", params={"q": query})
    first = re.search(r"By meaning.*?href=\"/latent/([^\"]+)\"", page.text, re.S).group(1)
    assert first in (f"{LAYERS[0]}/{SAE}/{masculine}", f"{LAYERS[1]}/{SAE}/{masculine}")
    keyword = client.get("/search", params={"q": "parenthes"})
    parentheses = latent_of(cfg, root, "parentheses")
    assert f'href="/latent/{LAYERS[0]}/{SAE}/{parentheses}"' in keyword.text.split("containing")[1]
    tokens = client.get("/search", params={"token": "his", "variant": f"{LAYERS[0]}|{SAE}"})
    hits = tokens.text.split("Latents firing on")[1]
    assert re.search(r'href="/latent/[^"]+/(\d+)"', hits).group(1) == str(masculine)


def test_compare_shows_the_pairs_and_summary(client, browser_lake):
    page = client.get("/compare", params={"a": f"{LAYERS[0]}|{SAE}", "b": f"{LAYERS[1]}|{SAE}"})
    assert page.status_code == 200
    assert "same sae, other layer" in page.text
    assert len(re.findall(r'<td class="num">1</td>', page.text)) >= 1  # identical explanations: cosine 1


@pytest.mark.parametrize("url, exists", [
    (f"/latent/{LAYERS[0]}/{SAE}/100000", f"/latent/{LAYERS[0]}/{SAE}/0"),
    (f"/latent/layers.9/{SAE}/0", f"/variant/{LAYERS[0]}/{SAE}"),
    (f"/variant/{LAYERS[0]}/no-such-sae", f"/variant/{LAYERS[1]}/{SAE}"),
    ("/no/such/page", f"/variant/{LAYERS[0]}/{SAE}"),
])
def test_unknown_things_are_404_pages_that_list_what_exists(client, url, exists):
    page = client.get(url)
    assert page.status_code == 404
    assert f'href="{exists}"' in page.text


def test_a_lake_without_explanations_still_browses(browser_lake, bare_lake):
    client = TestClient(make_app(browser_lake[0], bare_lake))
    for url in ("/", f"/variant/{LAYERS[0]}/{SAE}", f"/latent/{LAYERS[0]}/{SAE}/0", "/search?q=months",
                f"/search?token=the&variant={LAYERS[0]}|{SAE}", "/compare",
                f"/compare?a={LAYERS[0]}|{SAE}&b={LAYERS[1]}|{SAE}"):
        page = client.get(url)
        assert page.status_code == 200, url
    assert "Not built yet" in client.get(f"/latent/{LAYERS[0]}/{SAE}/0").text


def test_the_warm_up_loads_what_the_first_latent_page_needs(browser_lake, bare_lake):
    """`saelake serve` warms up in the background: afterwards the tokenizer and the explanation embeddings are
    loaded (this lake's planted variants have no decoder to load); on a lake without embeddings it loads the
    rest and stops without an error."""
    for lake, embedded in ((browser_lake[1], True), (bare_lake, False)):
        browser = make_app(browser_lake[0], lake).state.browser
        browser.warm_up()
        assert browser.texts._tokenizer is not None
        assert ("embeddings" in browser.lake._cache) is embedded


def test_the_browser_sees_a_table_committed_while_it_runs(browser_lake, bare_lake, tmp_path):
    import shutil

    from sae.lake.access import write_views_script

    root = tmp_path / "lake"
    shutil.copytree(bare_lake, root, symlinks=True)
    client = TestClient(make_app(browser_lake[0], root))
    assert "No explanation of this latent" in client.get(f"/latent/{LAYERS[0]}/{SAE}/0").text
    shutil.copytree(browser_lake[1] / "explanations", root / "explanations")
    write_views_script(root)
    assert "No explanation of this latent" not in client.get(f"/latent/{LAYERS[0]}/{SAE}/0").text


def test_the_latent_page_shows_output_side_explanations(browser_lake, tmp_path):
    """An output-side explanation (the intervention scorer's, explainer llm-output) written into a copy of the lake
    shows on its latent's page beside the input-side ones."""
    from sae.explanations.explainer import SCHEMA as EXPLANATIONS
    from sae.lake.access import write_views_script

    root = tmp_path / "lake"
    shutil.copytree(browser_lake[1], root, symlinks=True)
    Lake(root).write_partition(pa.Table.from_pylist([{"latent": 0, "explainer": "llm-output", "parsed": True,
                                                      "explanation": "makes the model write about rivers",
                                                      "explainer_model": "scripted"}], schema=EXPLANATIONS),
                               "output_explanations", LAYERS[0], SAE)
    write_views_script(root)
    text = TestClient(make_app(browser_lake[0], root)).get(f"/latent/{LAYERS[0]}/{SAE}/0").text
    assert "<b>llm-output</b>" in text and "makes the model write about rivers" in text
    assert "<b>truth</b>" in text  # the input-side explanations are still there


def test_saelake_serve_starts_the_browser_over_the_lake(browser_lake):
    """The command a user types: `saelake --config C serve --lake L --port P`, a real server process."""
    import subprocess
    import sys
    import time
    import urllib.request

    from .conftest import free_port

    cfg, root = browser_lake
    port = free_port()
    # Other tests' in-process `saelake` calls leave their config in this process's environment: a user's shell
    # would not have it.
    env = {k: v for k, v in os.environ.items() if k not in ("SAELAKE_CONFIG", "SAELAKE_LAKE", "DAGSTER_HOME")}
    server = subprocess.Popen([sys.executable, "-c", "import sys; from assets.cli import main; sys.exit(main())",
                               "--config", str(root.parent / "config.yaml"), "serve", "--lake", str(root),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    try:
        deadline, page = time.monotonic() + 60, None
        while page is None and time.monotonic() < deadline and server.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert page is not None, server.stdout.read() if server.poll() is not None else "no answer within 60 s"
        assert f"/variant/{LAYERS[0]}/{SAE}" in page
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_pages_are_self_contained(client):
    page = client.get("/")
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # nothing from a CDN
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert "url(" not in client.get("/static/style.css").text  # no web fonts or remote images


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if not p.is_symlink())


CRAFTED = [
    "/search?q=x'); COPY (SELECT 1) TO '/tmp/pwned.csv'; --",
    "/search?q=%27%3B%20DROP%20VIEW%20latents%3B%20--",
    "/search?token=x&variant=layers.1|planted'; COPY (SELECT 1) TO '/tmp/pwned.csv'; --",
    f"/variant/{LAYERS[0]}/{SAE}?sort=latent;DROP VIEW latents",
    f"/variant/{LAYERS[0]}/{SAE}?min_frequency=0);COPY (SELECT 1) TO '/tmp/pwned.csv",
    f"/variant/{LAYERS[0]}/{SAE}?page=-5&per_page=100000",
    "/variant/layers.1' OR '1'='1/planted",
    "/latent/layers.1/planted/0 UNION SELECT * FROM read_text('/etc/passwd')",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/compare?a=/etc/passwd|x&b=layers.1|planted",
]


def test_no_request_writes_reads_outside_or_runs_sql(client, browser_lake, tmp_path):
    root = browser_lake[1]
    before = snapshot(root)
    for url in CRAFTED:
        page = client.get(url)
        assert page.status_code in (200, 400, 404), url
        assert "root:x:0:0" not in page.text, url
    assert snapshot(root) == before
    assert not os.path.exists("/tmp/pwned.csv")
    # The connection behind every page is confined: outside files and writes are refused by DuckDB itself.
    con = client.app.state.browser.lake.connection()
    with pytest.raises(duckdb.PermissionException):
        con.sql("SELECT * FROM read_text('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.Error):
        con.execute(f"COPY (SELECT 1) TO '{tmp_path}/out.csv'")


@pytest.fixture(scope="module")
def explanation_free_client(browser_lake, tmp_path_factory):
    """The browser lake with intruder rows added to one variant's scores (explainer 'none', accuracies 0.1 to
    0.9 by latent) and an intervention calibration row marked not applicable, in the stores' own schemas. The
    intruder's real rows need SmolLM2 for minutes per latent, so they are written here, not scored."""
    from sae.scoring.calibration import SCHEMA as CALIBRATION_SCHEMA
    from sae.lake.access import write_views_script

    cfg, source = browser_lake
    root = tmp_path_factory.mktemp("explanation-free") / "lake"
    shutil.copytree(source, root, symlinks=True)
    lake = Lake(root)
    path = lake.files("scores", LAYERS[0], SAE)[0]
    scores = pq.read_table(path)
    latents = sorted({r["latent"] for r in scores.select(["latent"]).to_pylist()})
    template = {name: None for name in scores.schema.names}
    added = [{**template, "latent": latent, "explainer": NO_EXPLAINER, "scorer": "intruder", "source": source_,
              "accuracy": (0.1 + 0.8 * i / max(1, len(latents) - 1)) if source_ == "real" else 0.2,
              "chance": 0.2, "n_examples": 3, "scorer_model": "smollm2", "created_at": scores["created_at"][0]}
             for i, latent in enumerate(latents) for source_ in ("real", "control")]
    pq.write_table(pa.concat_tables([scores, pa.Table.from_pylist(added, schema=scores.schema)]), path)
    calibration_path = lake.files("scorer_calibration")[0]
    calibration = pq.read_table(calibration_path)
    row = {name: None for name in CALIBRATION_SCHEMA.names}
    row.update(scorer="intervention", scorer_model="smollm2", metric="accuracy", n_latents=0, applicable=False)
    pq.write_table(pa.concat_tables([calibration, pa.Table.from_pylist([row], schema=calibration.schema)]),
                   calibration_path)
    write_views_script(root)
    return TestClient(make_app(cfg, root)), latents


def test_explanation_free_scores_show_by_their_own_metric_and_sort(explanation_free_client):
    client, latents = explanation_free_client
    best = latents[-1]
    page = client.get(f"/latent/{LAYERS[0]}/{SAE}/{best}")
    assert page.status_code == 200
    row = re.search(r"<tr><td>intruder.*?</tr>", page.text, re.S)
    assert row and "accuracy" in row.group(0) and ">0.9<" in row.group(0) and ">0.2<" in row.group(0)
    listing = client.get(f"/variant/{LAYERS[0]}/{SAE}?sort=score:intruder&order=desc&per_page=200")
    ids = [int(i) for i in re.findall(rf'href="/latent/{LAYERS[0]}/{SAE}/(\d+)"', listing.text)]
    assert ids[: len(latents)] == latents[::-1]  # by intruder accuracy, which rises with the latent id
    calibration = re.search(r'<ul class="calibration">.*?</ul>', client.get("/").text, re.S).group(0)
    line = next(li for li in calibration.split("<li>") if "intervention (smollm2)" in li)
    assert ">not applicable</span>" in line and "decoder direction" in line
    assert "embedding (" in calibration  # the scorer calibrated by the fixture is listed too


def test_a_score_without_its_control_shows_a_dash(browser_lake, tmp_path):
    """A latent's score with no control row beside it (a control that could not be drawn for it) shows a dash in
    the control column, not a server error: a real pipeline run met this case."""
    import pyarrow.compute as pc

    from sae.lake.access import write_views_script

    root = tmp_path / "lake"
    shutil.copytree(browser_lake[1], root, symlinks=True)
    lake = Lake(root)
    scores = pa.concat_tables(pq.read_table(f) for f in lake.files("scores", LAYERS[0], SAE))
    latent = scores.filter(pc.field("source") == "control").column("latent")[0].as_py()
    kept = scores.filter(~((pc.field("latent") == latent) & (pc.field("source") == "control")))
    assert kept.num_rows < scores.num_rows
    lake.write_partition(kept, "scores", LAYERS[0], SAE)
    write_views_script(root)
    page = TestClient(make_app(browser_lake[0], root)).get(f"/latent/{LAYERS[0]}/{SAE}/{latent}")
    assert page.status_code == 200
    scores_card = page.text.split("<h2>Scores</h2>")[1].split("</section>")[0]
    assert "<td>" in scores_card and "—" in scores_card
