"""Benchmark of the latents stage against the bare truncated forward pass.

    python benchmarks/cache.py                       # the demo's model and layers, on CPU or the GPU
    python benchmarks/cache.py --tokens 16384 65536  # the token counts compared for peak memory

For each token count, a fresh process: (1) runs the model truncated at the deepest hookpoint over the
contexts, with the same batches and nothing else (the bare forward); (2) runs the whole latents stage
(forward, TopK encode of every SAE, sort, ZSTD Parquet in the background writer, commit) into a scratch
lake. Printed: tokens/s of both and their ratio, bytes on disk per non-zero activation, and the peak RSS
of the process (which should not grow with the token count). The SAEs are TopK SAEs with random weights
(seeded): their speed and storage are those of trained ones of the same shape.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(args) -> dict:
    import pyarrow.parquet as pq
    import torch

    from sae.config import CorpusConfig, ModelConfig
    from sae.corpus.documents import iter_documents, tokenize_contexts
    from sae.lake import Lake
    from sae.latents.engine import LatentSink, chunk_contexts_for, run_cache
    from sae.latents.hookpoints import capture
    from sae.models import load_model, load_tokenizer
    from sae.saes.codecs import Sae, SaeConfig

    torch.manual_seed(0)
    model_cfg = ModelConfig(device=args.device)
    model = load_model(model_cfg, REPO / "lake")
    device = next(model.parameters()).device
    n_contexts = args.n_tokens // args.ctx_len
    contexts = tokenize_contexts(iter_documents(CorpusConfig()), load_tokenizer(model_cfg, REPO / "lake"),
                                 n_contexts, args.ctx_len)
    tokens = contexts.column("tokens").combine_chunks().flatten().to_numpy().reshape(-1, args.ctx_len)
    d = model.config.hidden_size
    n_latents = d * args.expansion

    def random_sae(hookpoint):
        W_dec = torch.randn(n_latents, d)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        cfg = SaeConfig("topk", d, n_latents, k=args.k, hookpoint=hookpoint)
        return Sae(cfg, W_dec.T.clone(), torch.zeros(n_latents), W_dec, torch.zeros(d)).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with capture(model, args.layers) as forward:  # warm-up
        forward(torch.tensor(tokens[: args.batch_size], dtype=torch.long, device=device))
        sync()
        start = time.perf_counter()
        for b0 in range(0, len(tokens), args.batch_size):
            forward(torch.tensor(tokens[b0 : b0 + args.batch_size], dtype=torch.long).to(device))
        sync()
        forward_seconds = time.perf_counter() - start
        # The same forward plus the SAE encoders and nothing else: isolates the encoder's FLOPs from the
        # rest of the latents stage (sparse rows, sorting, compression, writing).
        saes = {h: random_sae(h) for h in args.layers}
        start = time.perf_counter()
        with torch.no_grad():
            for b0 in range(0, len(tokens), args.batch_size):
                out = forward(torch.tensor(tokens[b0 : b0 + args.batch_size], dtype=torch.long).to(device))
                for h, sae in saes.items():
                    for _ in range(args.saes_per_layer):
                        sae.encode_topk(out[h].reshape(-1, d))
        sync()
        encode_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as scratch:
        lake = Lake(scratch)
        sinks = [LatentSink(lake, h, None, f"topk-x{args.expansion}-{i}", random_sae(h))
                 for h in args.layers for i in range(args.saes_per_layer)]
        report = run_cache(model, tokens, sinks, args.batch_size, chunk_contexts_for(args.ctx_len, args.chunk_tokens),
                           progress=False)
        files = [f for s in sinks for f in lake.files("latents", s.hookpoint, s.sae_name)]
        nnz = sum(pq.read_metadata(f).num_rows for f in files)
        size = sum(f.stat().st_size for f in files)
    n = len(tokens) * args.ctx_len
    return {
        "tokens": n,
        "forward_tok_s": n / forward_seconds,
        "encode_tok_s": n / encode_seconds,
        "latents_tok_s": report.tokens_per_second,
        "ratio": report.tokens_per_second / (n / forward_seconds),
        "bytes_per_nnz": size / nnz,
        "nnz": nnz,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[65536, 262144])
    parser.add_argument("--layers", nargs="+", default=["layers.3", "layers.6"])
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-tokens", type=int, default=65536)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--saes-per-layer", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.n_tokens = args.worker
        print(json.dumps(worker(args)))
        return
    rows = []
    for n in args.tokens:
        command = [sys.executable, __file__, "--worker", str(n), "--layers", *args.layers,
                   "--ctx-len", str(args.ctx_len), "--batch-size", str(args.batch_size),
                   "--chunk-tokens", str(args.chunk_tokens), "--expansion", str(args.expansion), "--k", str(args.k),
                   "--saes-per-layer", str(args.saes_per_layer), "--device", args.device]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"layers {args.layers}, batch {args.batch_size}x{args.ctx_len}, TopK x{args.expansion} k={args.k}, "
          f"{args.saes_per_layer} SAE(s) per layer, device {rows[0]['device']}")
    print(f"{'tokens':>8} {'forward tok/s':>14} {'+encode tok/s':>14} {'latents tok/s':>14} {'ratio':>6} "
          f"{'B/nnz':>6} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['tokens']:>8} {r['forward_tok_s']:>14.0f} {r['encode_tok_s']:>14.0f} {r['latents_tok_s']:>14.0f} "
              f"{r['ratio']:>6.2f} {r['bytes_per_nnz']:>6.2f} {r['peak_rss_mib']:>13.0f}")
    print("ratio = latents stage / bare forward; '+encode' is the forward with the SAE encoders and nothing else")


if __name__ == "__main__":
    main()
