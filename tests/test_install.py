"""saelake installed from its wheel runs anywhere: from a folder outside the source tree, the lake and the
Dagster instance land in that folder, and nothing is written into the source tree or site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import write_config

REPO = Path(__file__).resolve().parents[1]
# Top-level folders that are not the package's sources (the data, the instance, earlier builds).
NOT_SOURCES = {".git", ".venv", "lake", ".dagster", "build", ".pytest_cache", ".gpu-stage", "benchmarks"}


def not_sources(folder: str, names: list[str]) -> set[str]:
    top = NOT_SOURCES if Path(folder) == REPO else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


def snapshot(root: Path) -> dict[str, int]:
    """Every path under `root` with its modification time (git's folder, a venv and byte-code caches aside)."""
    found = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__", ".pytest_cache")]
        for name in dirs + names:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = path.lstat().st_mtime_ns
    return found


@pytest.mark.slow
def test_the_wheel_runs_the_pipeline_from_any_folder(tmp_path, converted_model):
    # Build from a copy, so the build's own folders (build/, *.egg-info) stay out of the source tree.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=not_sources)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path / "dist")],
                   check=True)
    (wheel,) = (tmp_path / "dist").glob("saelake-*.whl")
    # A fresh venv that reuses this environment's third-party packages (no torch download) but gets saelake only
    # from the wheel: the .pth adds the directory without running its .pth files (no editable finder).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)], check=True)

    work = tmp_path / "work"
    work.mkdir()
    config = write_config(work, converted_model, lake="lake", explain={"n_latents": 1},
                          score={"scorers": ["embedding"]})
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SAELAKE_CONFIG", "SAELAKE_LAKE", "DAGSTER_HOME")}
    env["PATH"] = "/usr/bin:/bin"  # the venv is not on PATH: `saelake ui` must still find its dagster

    def saelake(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv / "bin" / "saelake", "--config", str(config), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1200)

    where = subprocess.run([python, "-c", "import sae, assets, sae.lake.sql as q; print(sae.__file__, assets.__file__,"
                            " q.QUERIES)"], cwd=work, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert all(str(site) in part for part in where.stdout.split()), where.stdout
    repo_before, site_before = snapshot(REPO), snapshot(site)

    done = saelake("run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Lake: {work / 'lake'}" in done.stdout
    assert (work / ".dagster" / "dagster.yaml").is_file() and (work / ".dagster" / "history").is_dir()
    assert list((work / "lake" / "explanations").glob("layer=*/sae=*/*.parquet"))
    query = saelake("sql", "SELECT count(*) || ' explained' AS n FROM explanations WHERE explainer = 'llm'")
    assert query.returncode == 0, query.stderr
    assert "2 explained" in query.stdout  # one latent by the LLM in each of the two layer x sae partitions

    assert snapshot(REPO) == repo_before, "the run wrote into the source tree"
    assert snapshot(site) == site_before, "the run wrote into site-packages"
