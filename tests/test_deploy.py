"""deploy/ cannot run here (no Kubernetes), so what must agree with the package is checked: the Ray of the image,
of the RayCluster and of saelake's `ray` extra (a Ray client reaches only a cluster of its own release), and
the Dagster release of the Helm chart and of `dagster-k8s` against the pinned one."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def pinned(requirement_prefix: str) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values()
                                                for r in extra)]
    (version,) = {r.split("==")[1] for r in requirements if r.startswith(f"{requirement_prefix}==")}
    return version


def test_the_image_cluster_and_package_run_one_ray_release():
    ray = pinned("ray")
    image = re.search(r"^FROM rayproject/ray:([\d.]+)-", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)
    cluster = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())["spec"]["rayVersion"]
    assert image == cluster == ray
    assert '".[postgres,ray,s3]"' in (DEPLOY / "Dockerfile").read_text()


def test_the_chart_and_run_launcher_match_the_pinned_dagster():
    dagster = pinned("dagster")
    library = "0." + str(int(dagster.split(".")[1]) + 16) + "." + dagster.split(".")[2]  # 1.13.27 -> 0.29.27
    assert library == pinned("dagster-postgres")
    assert f"dagster-k8s=={library}" in (DEPLOY / "Dockerfile").read_text()
    assert f"dagster/dagster --version {dagster}" in (DEPLOY / "README.md").read_text()
    assert yaml.safe_load((DEPLOY / "values.yaml").read_text())  # well-formed
