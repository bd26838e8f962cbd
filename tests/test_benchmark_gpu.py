"""benchmarks/gpu.py at CPU size, so the GPU check cannot rot between GPU sessions (its figures mean nothing)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_at_cpu_size_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--size", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio = latents stage / bare forward" in done.stdout
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and list(results["shapes"]) == ["tiny-llama"]
    r = results["shapes"]["tiny-llama"]
    for figure in ("forward_tok_s", "encode_tok_s", "latents_tok_s", "ratio", "train_tok_s", "spliced_tok_s"):
        assert r[figure] > 0, figure
    assert r["hookpoint"] == "layers.2" and r["num_latents"] == 2048 and r["k"] == 32
    # Sorted by latent and ZSTD-compressed, a non-zero costs a few bytes (int32 latent + float16 act uncompressed: 6).
    assert 1 < r["bytes_per_nnz"] < 6
    assert r["nnz"] <= r["tokens"] * r["k"]
    assert [p["tokens"] for p in r["rss"]] == [r["tokens"] // 4, r["tokens"]]
    assert all(p["peak_rss_mib"] > 50 and p["latents_tok_s"] > 0 for p in r["rss"])
    # delphi is optional: either measured, or the reason it was not.
    assert r.get("delphi_tok_s", 0) > 0 or r["delphi"].startswith(("not installed", "eai-delphi"))


def test_vllm_part_refuses_at_once_without_vllm(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--size", "cpu", "--vllm"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--vllm needs vllm" in done.stderr
