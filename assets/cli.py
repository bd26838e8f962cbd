"""The `saelake` command: `run` the whole graph, `validate` a config, query the lake with `sql`, open the `ui`,
browse the latents with `serve`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .instance import prepare_instance

GPU_POOL = "gpu"


def _config_path(args) -> str:
    """The config file (absolute), and the lake override, passed on through the environment so a Dagster code
    location started by `saelake ui` reads the same config and lake."""
    from sae.config import LAKE_ENV

    from .resources import CONFIG_ENV, config_path_from_env

    path = str(Path(args.config).resolve()) if args.config else config_path_from_env()
    os.environ[CONFIG_ENV] = path
    if args.lake:  # a folder is made absolute; an S3 URL is passed on as it is
        os.environ[LAKE_ENV] = args.lake if "://" in args.lake else str(Path(args.lake).resolve())
    return path


def run(args) -> int:
    """Materialize what is missing or stale (everything with --force), in-process, recorded in the instance."""
    import warnings

    import dagster as dg

    from sae.config import load_config
    from sae.models import check_against_model

    from .runner import run_pipeline

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    path = _config_path(args)
    cfg = load_config(path)
    check_against_model(cfg)  # a value the model cannot serve fails before any stage runs
    prepare_instance()
    instance = dg.DagsterInstance.get()
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, 1)
    return run_pipeline(cfg, path, instance, select=args.select, partitions=args.partition, force=args.force,
                        verbose=args.verbose)


def status(args) -> int:
    """Print what `saelake run` would build and skip, and why, without running anything."""
    from sae.config import load_config
    from sae.lake import lake_for
    from sae.lineage import plan

    from .runner import describe_plan, print_calibration

    cfg = load_config(_config_path(args))
    states = plan(cfg, lake_for(cfg), args.select, args.partition)
    print("\n".join(describe_plan(states)))
    todo = sum(s.status != "fresh" for s in states)
    print(f"{todo} of {len(states)} partitions to build" if todo else f"all {len(states)} partitions are fresh")
    print_calibration(cfg)
    return 0


def check(args) -> int:
    """Run the data checks again on the lake as it is (a file damaged since the run shows here)."""
    from sae.config import load_config

    from .runner import recheck

    return recheck(load_config(_config_path(args)), args.select, args.partition)


def validate(args) -> int:
    """Check the config in full (its file, this machine, the model) and print it resolved, defaults filled in."""
    import warnings

    from sae.config import load_config, resolved_yaml
    from sae.models import check_against_model

    path = args.path or _config_path(args)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfg = load_config(path)
        check_against_model(cfg)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"saelake validate: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the error
        return 1
    for warning in caught:
        print(f"saelake validate: warning: {warning.message}", file=sys.stderr)
    print(resolved_yaml(cfg), end="")
    return 0


def export(args) -> int:
    """Write the lake as a Hugging Face dataset folder; with --push, upload it (token checked first)."""
    from sae.config import load_config
    from sae.export.dataset import push_dataset, resolve_token
    from sae.export.stage import export_lake

    token = resolve_token() if args.push else None  # a missing token fails before any work
    cfg = load_config(_config_path(args))
    counts = export_lake(cfg, Path(args.out_dir), overwrite=args.overwrite)
    print(f"wrote {args.out_dir}: " + ", ".join(f"{c} ({n} rows)" for c, n in counts.items()))
    if args.push:
        url = push_dataset(Path(args.out_dir), args.push, token=token, private=args.private)
        print(f"pushed to {url}")
    return 0


def sql(args) -> int:
    """Run one query on a confined in-memory connection: it reads the lake's files (and --allow-path ones) only."""
    import duckdb

    from sae.config import load_config
    from sae.lake import Lake
    from sae.lake.access import LakeAccessError, open_readonly, read_only_statements
    from sae.lake.s3 import LakeLocationError

    try:
        lake = Lake(load_config(_config_path(args)).lake)
        read_only_statements(args.query)
        con = open_readonly(str(lake), allow=[Path(p) for p in args.allow_path])
    except (LakeAccessError, LakeLocationError, FileNotFoundError) as err:
        print(f"saelake sql: {err}", file=sys.stderr)
        return 1
    with con:
        try:
            con.sql(args.query).show(max_rows=args.max_rows, max_width=args.max_width)
        except duckdb.PermissionException as err:
            print(f"saelake sql: {err}\n  saelake sql reads only files under the lake ({lake}) through its views; "
                  "--allow-path PATH allows more", file=sys.stderr)
            return 1
        except duckdb.Error as err:
            print(f"saelake sql: {err}", file=sys.stderr)
            return 1
    return 0


def ui(args) -> int:
    """`dagster dev` on the instance of prepare_instance, from the working directory, with the code location
    named explicitly (an installed saelake has no pyproject.toml to find it through)."""
    import dagster as dg

    from sae.config import load_config

    from .lineage import record_settings

    home = prepare_instance()
    with dg.DagsterInstance.get() as instance:
        # The config may have been edited since the last run: the UI then shows what that made stale.
        changed = record_settings(instance, load_config(_config_path(args)))
    if changed:
        print(f"the settings of {changed} partitions changed since they were last recorded; the UI marks the "
              "partitions they make stale", flush=True)
    # The dagster next to this Python: `.venv/bin/saelake ui` works when the venv is not on PATH.
    dagster = Path(sys.executable).with_name("dagster")
    if not dagster.exists():
        found = shutil.which("dagster")
        if found is None:
            raise FileNotFoundError(f"no `dagster` executable next to {sys.executable} or on PATH; "
                                    "install saelake into this environment (pip install saelake)")
        dagster = Path(found)
    command = [str(dagster), "dev", "-m", "assets", "--port", str(args.port), "--host", args.host]
    print(f"starting {' '.join(command)} in {Path.cwd()} with DAGSTER_HOME={home}", flush=True)
    return subprocess.call(command)


def serve(args) -> int:
    """The latent browser over the lake, read-only (see sae/browser/app.py)."""
    from sae.browser.app import serve as serve_browser
    from sae.config import load_config

    cfg = load_config(_config_path(args))
    location = args.serve_lake or args.lake or cfg.lake
    if "://" in location:
        print(f"saelake serve: the browser reads a lake folder, not {location}; serve a local lake "
              "(--lake PATH)", file=sys.stderr)
        return 1
    lake = Path(location)
    serve_browser(lake, cfg.model, cfg.score.embedder, host=args.host, port=args.port,
                  embedder_device=cfg.score.embedder_device)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saelake", description=__doc__)
    parser.add_argument("--config", help="pipeline YAML (default: $SAELAKE_CONFIG, else the offline demo.yaml)")
    parser.add_argument("--lake", metavar="PATH", help="the lake folder, instead of the config's `lake:`")
    commands = parser.add_subparsers(dest="command", required=True)
    steps = commands.add_parser("run", help="materialize every asset partition that is missing or stale")
    steps.add_argument("--select", nargs="+", default=[], metavar="ASSET",
                       help="only these assets (`latents+`: and everything downstream of it)")
    steps.add_argument("--partition", nargs="+", default=[], metavar="KEY",
                       help="only these partitions: `layers.3|topk-x4`, a layer (`layers.3`) or an SAE (`topk-x4`)")
    steps.add_argument("--force", action="store_true", help="rebuild the selection even where it is fresh")
    steps.add_argument("--verbose", action="store_true", help="print Dagster's event log as the run goes")
    steps.set_defaults(func=run)
    state = commands.add_parser("status", help="what `saelake run` would build or skip, and why (runs nothing)")
    state.add_argument("--select", nargs="+", default=[], metavar="ASSET", help="as for `run`")
    state.add_argument("--partition", nargs="+", default=[], metavar="KEY", help="as for `run`")
    state.set_defaults(func=status)
    again = commands.add_parser("check", help="run the data checks again on the fresh partitions of the lake")
    again.add_argument("--select", nargs="+", default=[], metavar="ASSET", help="as for `run`")
    again.add_argument("--partition", nargs="+", default=[], metavar="KEY", help="as for `run`")
    again.set_defaults(func=check)
    validation = commands.add_parser("validate", help="check the config in full and print it with every default")
    validation.add_argument("path", nargs="?", metavar="CONFIG", help="pipeline YAML (default: as --config)")
    validation.set_defaults(func=validate)
    query = commands.add_parser("sql", help="run one read-only SQL query over the lake and print the result")
    query.add_argument("query", help='e.g. "SELECT layer, sae, count(*) FROM latents GROUP BY ALL"')
    query.add_argument("--max-rows", type=int, default=40)
    query.add_argument("--max-width", type=int, default=200)
    query.add_argument("--allow-path", metavar="PATH", action="append", default=[],
                       help="also let the query read this file or folder (repeatable); otherwise only the lake")
    query.set_defaults(func=sql)
    out = commands.add_parser("export", help="write the lake as a Hugging Face dataset folder (and push it)")
    out.add_argument("out_dir", help="folder to write (replaced if it holds an earlier export)")
    out.add_argument("--push", metavar="ORG/NAME", help="upload to this Hub dataset repo (token: HF_TOKEN or login)")
    out.add_argument("--private", action="store_true", help="create the Hub repo as private")
    out.add_argument("--overwrite", action="store_true", help="replace out_dir even if it is not an export")
    out.set_defaults(func=export)
    dagster_ui = commands.add_parser("ui", help="start `dagster dev` on the instance ($DAGSTER_HOME, else ./.dagster)")
    dagster_ui.add_argument("--port", type=int, default=3000)
    dagster_ui.add_argument("--host", default="127.0.0.1")
    dagster_ui.set_defaults(func=ui)
    browse = commands.add_parser("serve", help="browse the lake's latents in a web browser (read-only)")
    browse.add_argument("--lake", dest="serve_lake", metavar="PATH", help="the lake folder (as the global --lake)")
    browse.add_argument("--port", type=int, default=8080)
    browse.add_argument("--host", default="127.0.0.1")
    browse.set_defaults(func=serve)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"saelake {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
