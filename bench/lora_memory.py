"""Peak memory of one training step, full fine-tuning vs LoRA, on a random ~100M-parameter decoder.

    python bench/lora_memory.py [--layers 12 --hidden 768 --queries 8 --passages 8 --q_len 32 --p_len 128]

Each variant runs in a fresh subprocess (built the way the train driver builds it: last-token pooling,
the CPU kernels it picks, AdamW over the trainable parameters), and reports the process's resident-set
high-water mark (``ru_maxrss``) at the end of one forward + backward + optimizer step: weights, gradients,
optimizer state and activations together, everything the step needs.  On CPU that is the honest measure
(tracemalloc does not see torch's allocator, and torch's CPU profiler reports per-op allocations, not
the peak); on a GPU the step's ``torch.cuda.max_memory_allocated`` is printed as well.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_decoder(folder: Path, args) -> int:
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                         intermediate_size=int(args.hidden * 8 / 3) // 64 * 64, max_position_embeddings=512)
    model = LlamaModel(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def one_step(folder: str, lora: bool, args) -> dict:
    """Runs in the child: one training step, then the high-water marks."""
    import torch

    from tevatron.arguments import ModelArguments
    from tevatron.cpu_kernels import use_fast_cpu_dropout, use_onednn_linear
    from tevatron.modeling import DenseModel

    torch.manual_seed(0)
    model = DenseModel.build(ModelArguments(model_name_or_path=folder, lora=lora, lora_r=args.lora_r,
                                            lora_alpha=2 * args.lora_r))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if device.type == "cpu":
        use_onednn_linear(model, "auto")
        use_fast_cpu_dropout(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(1)

    def batch(rows, length):
        return {"input_ids": torch.randint(10, 32000, (rows, length), generator=generator).to(device),
                "attention_mask": torch.ones(rows, length, dtype=torch.long, device=device)}

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = model(query=batch(args.queries, args.q_len), passage=batch(args.queries * args.passages, args.p_len))["loss"]
    loss.backward()
    optimizer.step()
    result = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "rss_before_step_mib": before / 1024,
              "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--passages", type=int, default=8, help="passages per query")
    parser.add_argument("--q_len", type=int, default=32)
    parser.add_argument("--p_len", type=int, default=128)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="recompute each layer in the backward pass (as --gradient_checkpointing in training)")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child[0], args.child[1] == "lora", args)))
        return
    with tempfile.TemporaryDirectory() as folder:
        n_parameters = build_decoder(Path(folder), args)
        print(f"random Llama decoder: {n_parameters / 1e6:.1f}M parameters, {args.layers} layers, hidden "
              f"{args.hidden}; one step of {args.queries} queries x {args.passages} passages "
              f"(lengths {args.q_len}/{args.p_len}){', gradient checkpointing' if args.gradient_checkpointing else ''}")
        results = {}
        for variant in ("full", "lora"):
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", folder, variant],
                                   capture_output=True, text=True, cwd=REPO_ROOT)
            if child.returncode != 0:
                sys.exit(f"{variant} failed:\n{child.stderr[-3000:]}")
            results[variant] = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{variant:>4}: peak RSS {results[variant]['peak_rss_mib']:8.0f} MiB "
                  f"(before the step {results[variant]['rss_before_step_mib']:.0f} MiB), "
                  f"{results[variant]['trainable']:,} trainable parameters"
                  + (f", CUDA peak {results[variant]['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in results[variant]
                     else ""))
        ratio = results["lora"]["peak_rss_mib"] / results["full"]["peak_rss_mib"]
        print(f"peak memory LoRA / full: {ratio:.2f} (target <= 0.5)")
        if "cuda_peak_mib" in results["full"]:
            print(f"CUDA peak LoRA / full: {results['lora']['cuda_peak_mib'] / results['full']['cuda_peak_mib']:.2f}")


if __name__ == "__main__":
    main()
