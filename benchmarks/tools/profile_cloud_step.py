"""Profile one batched decode step of the cloud engine: top CUDA kernels by device time.

python benchmarks/tools/profile_cloud_step.py MODEL_DIR [--slots N] [--span S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--span", type=int, default=512)
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cloud_worker.engine.decode_step import DecodeStep
    from cloud_worker.engine.model import load_model
    from cloud_worker.engine.slot_cache import SlotCache

    lm = load_model(args.model_dir)
    cache = SlotCache(
        lm.num_layers, args.slots, lm.kv_heads, lm.head_dim, 2048, lm.dtype, lm.device
    )
    step = DecodeStep(lm, cache, cuda_graphs=False)
    step.tokens.random_(0, 1000)
    cache.write_pos.fill_(300)
    step.positions.fill_(300)
    for _ in range(3):
        step(args.span)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step(args.span)
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
