"""What a 3×3 convolution costs on this CPU as its output width shrinks: why pruned channels save less than MACs.

For the three stages of a CIFAR ResNet (32×32 maps with 16 channels, 16×16 with 32, 8×8 with 64), a 3×3 conv
(padding 1, no bias) from the stage's full width to ``k`` output channels, ``k`` from a quarter of the width to
all of it, timed with ``F.conv2d`` in NCHW and in channels-last (NHWC) memory format: the fastest of
``--repeats`` calls after a warm-up. A cost that stays flat while ``k`` falls is MACs that pruning removes but the
kernel still pays for (oneDNN computes output channels in blocks). Usage::

    python bench/conv_widths.py                     # batch 128 and 1, 2 threads
    python bench/conv_widths.py --batch 128 --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

STAGES = ((32, 16), (16, 32), (8, 64))  # (map size, full width)


def fastest_ms(fn: Callable[[], object], repeats: int) -> float:
    """Fastest single call of ``fn`` in milliseconds, after three untimed calls."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1], help="batch sizes (default 128 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per conv (default 10 at batch > 1, 200 at 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s); ms per 3x3 conv, fastest of the timed calls")
    with torch.inference_mode():
        for batch in args.batch:
            repeats = args.repeats or (200 if batch == 1 else 10)
            for hw, full in STAGES:
                widths = sorted({full // 4, full // 4 + 1, full // 2 - 1, full // 2, full // 2 + 1, full})
                x = torch.randn(batch, full, hw, hw)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                cells = []
                for k in widths:
                    w = torch.randn(k, full, 3, 3)
                    nchw = fastest_ms(lambda w=w, x=x: F.conv2d(x, w, None, 1, 1), repeats)
                    nhwc = fastest_ms(lambda w=w, x=x_cl: F.conv2d(x, w, None, 1, 1), repeats)
                    cells.append(f"{k:>2}: {nchw:7.3f} / {nhwc:7.3f}")
                print(f"batch {batch:>3}, {hw:>2}x{hw:<2} maps, {full} -> k (NCHW / NHWC ms):  " + "  ".join(cells))


if __name__ == "__main__":
    main()
