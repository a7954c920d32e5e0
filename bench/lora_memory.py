"""Peak memory of one training step, full fine-tuning vs LoRA, plain, with gradient checkpointing and with
GradCache, on a random ~100M-parameter decoder.

    python bench/lora_memory.py [--layers 12 --hidden 768 --queries 8 --passages 8 --q_len 32 --p_len 128]

Each of the eight variants (full / LoRA x plain / gradient checkpointing / GradCache / both) runs in a fresh subprocess,
built the way the train driver builds it (last-token pooling, the CPU kernels it picks, AdamW over the trainable
parameters, checkpointing enabled through the call the HF Trainer makes, GradCache through the step the
trainer takes for ``--grad_cache`` with ``--gc_q_chunk_size``/``--gc_p_chunk_size``), and takes one forward +
backward + optimizer step.  Which memory LoRA can remove: the gradients and AdamW state of the frozen weights.
What it cannot: the weights and the activations.  Gradient checkpointing and GradCache bound the activations
(GradCache to one chunk's graph), which is where LoRA's share shows.  Two measures of its peak:

* **tensor memory** (the headline): every tensor storage the step holds, counted exactly.  A
  ``TorchDispatchMode`` sees the output of every aten op (custom autograd functions and oneDNN kernels
  included, they are aten ops too), adds each new storage's bytes once, and subtracts them when the storage is
  freed (a weakref finalizer on the storage object, which torch keeps unique per storage); the parameters are
  added before the step.  Its maximum is what ``torch.cuda.max_memory_allocated`` reports on a GPU, minus the
  caching allocator's rounding: the figure that does not depend on the C allocator.  The split at the peak
  says where the bytes are: parameters, parameter gradients, optimizer (AdamW state plus its step's
  temporaries), forward (activations saved for the backward pass) and backward (recomputed activations,
  activation gradients, temporaries); the gradients are told apart by a post-accumulate-grad hook.
  Not counted: memory outside tensors (oneDNN scratchpads, Python objects), small next to these.
* **peak RSS** (``ru_maxrss``, the process's resident high-water mark, model loading included): what the
  operating system saw.  It adds glibc malloc's retention: freed blocks under its (dynamic, up to 32 MiB)
  mmap threshold stay in the heap, so the many mid-sized tensors of a checkpointed backward pass raise RSS
  above the bytes actually held.  ``--mmap_threshold`` sets ``MALLOC_MMAP_THRESHOLD_`` for the children
  (a fixed threshold: every larger block is returned on free) to show that part.
tracemalloc does not see torch's allocator, and the profiler reports per-op allocations, not a peak.  On a GPU
the step's ``torch.cuda.max_memory_allocated`` is printed as well.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = {"plain": "", "checkpointing": " +checkpointing", "grad_cache": " +GradCache",
         "grad_cache+checkpointing": " +GradCache +checkpointing"}
VARIANTS = [(variant, mode) for mode in MODES for variant in ("full", "lora")]
CATEGORIES = ["parameters", "gradients", "optimizer", "forward", "backward"]


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


def tensor_memory_tracker():
    """A dispatch mode counting the bytes of live tensor storages by category (see the module docstring)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class TensorMemory(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = {}  # storage id -> (bytes, category)
            self.by_category = dict.fromkeys(CATEGORIES, 0)
            self.total = self.peak = 0
            self.at_peak = {}
            self.phase = "forward"  # the category of what is allocated now

        def add(self, storage, category):
            key, size = storage._cdata, storage.nbytes()
            if key in self.live or size == 0:
                return
            self.live[key] = (size, category)
            self.by_category[category] += size
            self.total += size
            weakref.finalize(storage, self._free, key)
            if self.total > self.peak:
                self.peak, self.at_peak = self.total, dict(self.by_category, phase=self.phase)

        def _free(self, key):
            size, category = self.live.pop(key)
            self.by_category[category] -= size
            self.total -= size

        def recategorize(self, tensor, category):
            key = tensor.untyped_storage()._cdata
            if key in self.live and self.live[key][1] != category:
                size, old = self.live[key]
                self.live[key] = (size, category)
                self.by_category[old] -= size
                self.by_category[category] += size

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                    self.add(tensor.untyped_storage(), self.phase)
            return out

    return TensorMemory()


def one_step(folder: str, lora: bool, mode: str, args) -> dict:
    """Runs in the child: one training step under the tracker, then the peaks."""
    import torch

    from tevatron.arguments import ModelArguments
    from tevatron.cpu_kernels import use_fast_cpu_dropout, use_onednn_linear
    from tevatron.gradcache import grad_cache_step
    from tevatron.modeling import DenseModel

    torch.manual_seed(0)
    model = DenseModel.build(ModelArguments(model_name_or_path=folder, lora=lora, lora_r=args.lora_r,
                                            lora_alpha=2 * args.lora_r, lora_dropout=args.lora_dropout))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    if "checkpointing" in mode:  # the call the HF Trainer makes for --gradient_checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False)
    if device.type == "cpu":
        use_onednn_linear(model, "auto")
        use_fast_cpu_dropout(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(1)

    def batch(rows, length):
        return {"input_ids": torch.randint(10, 32000, (rows, length), generator=generator).to(device),
                "attention_mask": torch.ones(rows, length, dtype=torch.long, device=device)}

    query, passage = batch(args.queries, args.q_len), batch(args.queries * args.passages, args.p_len)
    tracker = tensor_memory_tracker()
    for parameter in model.parameters():
        tracker.add(parameter.untyped_storage(), "parameters")
    for parameter in trainable:
        parameter.register_post_accumulate_grad_hook(lambda p: tracker.recategorize(p.grad, "gradients"))
    with tracker:
        if mode.startswith("grad_cache"):  # the trainer's --grad_cache step: forward and backward alternate chunk by
            tracker.phase = "backward"  # chunk inside it, so all its activations count as the backward's
            grad_cache_step(model, query, passage, args.gc_q_chunk_size, args.gc_p_chunk_size,
                            compute_loss=model.compute_loss)
            saved_by_forward = 0
        else:
            loss = model(query=query, passage=passage)["loss"]
            tracker.phase = "backward"
            saved_by_forward = tracker.by_category["forward"]
            loss.backward()
        tracker.phase = "optimizer"
        optimizer.step()
    optimizer_state = sum(t.untyped_storage().nbytes() for state in optimizer.state.values()
                          for t in state.values() if isinstance(t, torch.Tensor))
    mib = 2 ** 20
    result = {"peak_mib": tracker.peak / mib, "peak_phase": tracker.at_peak["phase"],
              "at_peak_mib": {name: tracker.at_peak[name] / mib for name in CATEGORIES},
              "parameters_mib": sum(p.untyped_storage().nbytes() for p in model.parameters()) / mib,
              "gradients_mib": sum(p.grad.untyped_storage().nbytes() for p in trainable) / mib,
              "optimizer_state_mib": optimizer_state / mib, "saved_by_forward_mib": saved_by_forward / mib,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "trainable": sum(p.numel() for p in trainable)}
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / mib
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
    parser.add_argument("--lora_dropout", type=float, default=0.1, help="as the train driver's default")
    parser.add_argument("--gc_q_chunk_size", type=int, default=4, help="as the train driver's default")
    parser.add_argument("--gc_p_chunk_size", type=int, default=8, help="passages per GradCache chunk")
    parser.add_argument("--mmap_threshold", type=int, default=None,
                        help="MALLOC_MMAP_THRESHOLD_ for the children (glibc): a fixed threshold, see above")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child[0], args.child[1] == "lora", args.child[2], args)))
        return
    env = dict(os.environ)
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    with tempfile.TemporaryDirectory() as folder:
        n_parameters = build_decoder(Path(folder), args)
        print(f"random Llama decoder: {n_parameters / 1e6:.1f}M parameters, {args.layers} layers, hidden "
              f"{args.hidden}; one step (forward, backward, AdamW) of {args.queries} queries x {args.passages} "
              f"passages (lengths {args.q_len}/{args.p_len}); LoRA r={args.lora_r} dropout {args.lora_dropout}; "
              f"GradCache chunks {args.gc_q_chunk_size} queries / {args.gc_p_chunk_size} passages"
              + (f"; MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold is not None else ""),
              flush=True)
        results = {}
        for variant, mode in VARIANTS:
            name = f"{variant}{MODES[mode]}"
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", folder, variant, mode],
                                   capture_output=True, text=True, cwd=REPO_ROOT, env=env)
            if child.returncode != 0:
                sys.exit(f"{name} failed:\n{child.stderr[-3000:]}")
            results[name] = result = json.loads(child.stdout.strip().splitlines()[-1])
            split = ", ".join(f"{category} {result['at_peak_mib'][category]:,.0f}" for category in CATEGORIES)
            print(f"{name:>20}: tensor peak {result['peak_mib']:7,.0f} MiB in the {result['peak_phase']} "
                  f"({split}); peak RSS {result['peak_rss_mib']:7,.0f} MiB"
                  + (f"; CUDA peak {result['cuda_peak_mib']:,.0f} MiB" if "cuda_peak_mib" in result else ""),
                  flush=True)
            print(f"{'':>20}  sizes: parameters {result['parameters_mib']:,.0f}, gradients "
                  f"{result['gradients_mib']:,.0f}, AdamW state {result['optimizer_state_mib']:,.0f}, kept by "
                  f"the forward pass {result['saved_by_forward_mib']:,.0f} MiB; "
                  f"{result['trainable']:,} trainable parameters", flush=True)
        for mode, suffix in MODES.items():
            full, lora = results[f"full{suffix}"], results[f"lora{suffix}"]
            print(f"LoRA / full, {mode.replace('_', ' ')}: tensor peak "
                  f"{lora['peak_mib'] / full['peak_mib']:.2f}, peak RSS "
                  f"{lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}"
                  + (f", CUDA peak {lora['cuda_peak_mib'] / full['cuda_peak_mib']:.2f}" if "cuda_peak_mib" in full
                     else "") + " (target <= 0.5)")
        if args.json:
            args.json.write_text(json.dumps({"arguments": {k: v for k, v in vars(args).items()
                                                           if k not in ("child", "json")}, "results": results},
                                            indent=1))


if __name__ == "__main__":
    main()
