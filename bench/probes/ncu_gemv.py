"""Probe: six calls of the tensor-core GEMV at 4096 x 14336, batch 1, for Nsight Compute:

    ncu --kernel-name regex:quant_gemv_tc --launch-skip 5 --launch-count 1 --set full \
        python3 bench/probes/ncu_gemv.py [WARPS,WIDE,ROLLING]

The optional argument is set_quant_gemv_tc_tuning's (e.g. 8,1,0: 8-warp blocks, loads batch by batch).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu_shapes import random_packed  # noqa: E402
from engine.ops import cuda  # noqa: E402
from engine.quant.layout import to_column_strips  # noqa: E402

cuda.ensure_loaded()
if len(sys.argv) > 1:
    torch.ops.exlsp.set_quant_gemv_tc_tuning(*(int(v) for v in sys.argv[1].split(",")))
gen = torch.Generator(device="cuda").manual_seed(1)
w = random_packed(4096, 14336, bits=4, group_size=128, dtype=torch.float16, bias=False, gen=gen)
x = torch.randn((1, 4096), device="cuda").half()
out = torch.empty((1, 14336), device="cuda").half()
codes = to_column_strips(w.qweight)  # the tensor-core GEMV's layout
for _ in range(6):
    torch.ops.exlsp.quant_gemv_tc(x, codes, w.scales, w.zeros, None, None, 128, out)
torch.cuda.synchronize()
