"""Probe: tests/engine/test_gpu_model.py under each GEMV tuning and decode-attention path, in one
process (the knobs are process state), to see which change a failure follows.

    python bench/probes/gpu_model_isolate.py
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.ops import cuda  # noqa: E402

cuda.ensure_loaded()
for label, warps, wide in [("default", 0, True), ("no batches of 8", 0, False), ("8-warp blocks", 8, False)]:
    torch.ops.exlsp.set_quant_gemv_tc_tuning(warps, wide)
    print(f"== {label}", flush=True)
    pytest.main(
        ["-q", "-p", "no:cacheprovider", "tests/engine/test_gpu_model.py", "-m", "gpu", "--tb=line", "-rN"]
    )
torch.ops.exlsp.set_quant_gemv_tc_tuning(0, True)
