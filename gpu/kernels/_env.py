"""Pick Triton's interpreter when the process has no CUDA device.

Triton decides between compiling and interpreting a kernel when the kernel is
*decorated*, i.e. when its module is imported, by reading ``TRITON_INTERPRET``.
So this module must run before any kernel module: ``gpu/kernels/__init__.py``
imports it first, and so should any script that imports a kernel file alone.

An explicit ``TRITON_INTERPRET`` in the environment (either value) wins.
"""
from __future__ import annotations

import os


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off")


def use_interpreter_without_cuda() -> bool:
    """Set TRITON_INTERPRET to 1 without CUDA and to 0 with it, unless set
    already. The choice is written down either way: a later
    ``os.environ.setdefault("TRITON_INTERPRET", "1")`` (a test module
    imported after this one, a child process) must not flip it once kernels
    are compiled, or CUDA tensors run through the interpreter (bf16 results
    wrong, CUDA-graph capture refused)."""
    if "TRITON_INTERPRET" not in os.environ:
        import torch  # torch does not import triton, so this is still early enough

        os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
    return interpreting()


def _fix_interpreter_scalar_index() -> None:
    """Work around triton#9171 (Triton 3.6 interpreter with numpy >= 2.4).

    The interpreter holds scalars as 1-element arrays and converts them for
    ``range(lo, hi)`` with ``int(array)``, which numpy 2.4 rejects, so every
    loop with a run-time bound fails. Re-define that conversion the way the
    upstream fix does; a no-op where numpy still accepts it.
    """
    import numpy as np

    try:
        int(np.zeros(1, dtype=np.int32))
        return
    except TypeError:
        pass
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "pagesim_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.pagesim_fixed = True
    interpreter._patch_lang_tensor = patched


if use_interpreter_without_cuda():
    _fix_interpreter_scalar_index()
