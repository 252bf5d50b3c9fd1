"""Writing checkpoints: GPTQ packing in the AutoGPTQ/GPTQModel layout, and the atomic folder write.

On-disk tensors of one quantized linear layer `prefix` (K = in_features, N = out_features, G groups):
    prefix.qweight  int32 (K * bits // 32, N)   codes packed along K, low bits first
    prefix.qzeros   int32 (G, N * bits // 32)   zero - 1 packed along N, low bits first ("gptq" format)
    prefix.scales   fp16  (G, N)
    prefix.g_idx    int32 (K,)                  group of each input feature (act-order: not monotonic)
    prefix.bias     fp16  (N,)                  only when the layer has one
and config.json carries quantization_config {bits, group_size, desc_act, sym, checkpoint_format: "gptq",
quant_method: "gptq"}. engine/quant/gptq_format.py reads this back; so do other GPTQ loaders.

A checkpoint folder is written into a hidden sibling `.NAME.tmp-XXXX` and renamed into place only
when complete, so an interrupted or failed run (Ctrl-C, a full disk) never leaves a folder that loads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.quant.layout import pack_int32
from engine.quant.rtn import QuantizedWeight, QuantSpec


def pack_linear(q: QuantizedWeight, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Tensor suffix -> tensor of one quantized layer, in the "gptq" (v1) checkpoint convention."""
    tensors = {
        "qweight": pack_int32(q.codes, q.bits),  # (K * bits / 32, N)
        "qzeros": pack_int32((q.zeros - 1).t().contiguous(), q.bits).t().contiguous(),  # (G, N * bits / 32)
        "scales": q.scales.to(torch.float16).contiguous(),  # (G, N)
        "g_idx": q.g_idx.to(torch.int32).clone(),  # (K,) own storage: fused parts share one g_idx
    }
    if bias is not None:
        tensors["bias"] = bias.to(torch.float16).contiguous()
    return {k: v.cpu() for k, v in tensors.items()}


def quantization_config(spec: QuantSpec) -> dict:
    return {
        "bits": spec.bits,
        "group_size": spec.group_size,
        "desc_act": spec.act_order,
        "sym": spec.sym,
        "damp_percent": spec.damp_percent,
        "true_sequential": True,
        "checkpoint_format": "gptq",
        "quant_method": "gptq",
    }


class DestinationExists(FileExistsError):
    pass


def check_destination(dst: Path, force: bool) -> None:
    """Refuse early (before an hour of quantization) to overwrite a checkpoint without --force."""
    if dst.exists() and not force:
        raise DestinationExists(f"{dst} already exists (use --force to replace it)")


@contextlib.contextmanager
def staged_directory(dst: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `dst`; on success it replaces `dst` (which must not exist unless
    `force`); on any error it is removed and `dst` is left as it was."""
    dst = Path(dst)
    check_destination(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield staging
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / dst.name)
            os.replace(staging, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, dst)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"out of disk space while writing {dst}; nothing was written"
            ) from exc
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_checkpoint(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    config: dict,
    extra_files: dict[str, bytes | str] | None = None,
) -> None:
    """Write model.safetensors, config.json and the extra files (tokenizer.json, ...) into `folder`."""
    folder = Path(folder)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, content in (extra_files or {}).items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
