"""Compile paged_decode (plain, and with rope_decode's fused RoPE) for sm_90 on a machine without a GPU.

    PYTHONPATH=. python bench/compile_sm90.py

Prints, per variant, the shared memory Triton allots (the K/V buffers), the
cp.async and mma counts in the PTX, and cuobjdump's registers / stack: the
occupancy questions a device call would otherwise answer (bench/KERNEL_NOTES.md,
run 8). Pointers and strides carry 16-byte divisibility hints, as the real
launches do; without them the loads are scalar and the numbers meaningless.
"""
import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret (set before triton loads)
sys.path.insert(0, ".")
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pagesim.gpu.kernels.paged_decode import _paged_decode_kernel as k  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")

POINTERS = {"opart_ptr": "*fp32", "lse_ptr": "*fp32", "bt_ptr": "*i32", "ctx_ptr": "*i32", "rows_ptr": "*i32",
            "pos_ptr": "*i32", "slot_ptr": "*i32"}  # other *_ptr: bf16


def signature() -> dict:
    sig = {}
    for name in k.arg_names:
        if name.endswith("_ptr"):
            sig[name] = POINTERS.get(name, "*bf16")
        elif name in ("qk_scale", "log2_theta"):
            sig[name] = "fp32"
        else:
            sig[name] = "constexpr" if name.isupper() else "i32"
    return sig


def report(rope: int, split: bool, bt_ahead: bool) -> str:
    const = dict(GROUP=4, BLOCK_G=16, HEAD_DIM=128, BLOCK_D=128, BLOCK_SIZE=16, TILE_N=64, SPLIT=split,
                 DOT_PREC="tf32", BT_AHEAD=bt_ahead, SPLIT_BY_CTX=True, ROPE=rope)
    attrs = {(k.arg_names.index(n),): [["tt.divisibility", 16]] for n in k.arg_names
             if n.endswith("_ptr") or n.startswith("stride_")}
    cc = triton.compile(ASTSource(k, signature(), const, attrs), target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=4, num_stages=3))
    path = f"/tmp/paged_decode_rope{rope}_split{int(split)}.cubin"
    with open(path, "wb") as fh:
        fh.write(cc.asm["cubin"])
    usage = subprocess.run([CUOBJDUMP, "-res-usage", path], capture_output=True, text=True).stdout
    line = next(x for x in usage.splitlines() if "REG" in x).strip()
    ptx = cc.asm["ptx"]
    return (f"rope={rope} split={split} bt_ahead={bt_ahead}: shared={cc.metadata.shared} "
            f"cp.async={ptx.count('cp.async.cg')} mma.sync={ptx.count('mma.sync')} | {line}")


if __name__ == "__main__":
    for rope in (0, 1, 2):  # 0 paged_decode, 1 rope_decode on qkv rows, 2 rope_decode gathering table rows
        for split, bt_ahead in ((True, True), (False, False)):  # the two DECODE_TABLE loop forms
            print(report(rope, split, bt_ahead))
