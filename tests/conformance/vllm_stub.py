"""Load vLLM's block pool from an unpacked vllm wheel, every other vllm
module replaced by an empty stub (nothing of vLLM is copied here).

    pip download vllm==0.33.0 --no-deps -d /tmp/w
    mkdir /tmp/w/site && cd /tmp/w/site && unzip -q ../vllm-*.whl '*.py'
    PAGESIM_VLLM_SITE=/tmp/w/site pytest tests/conformance
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import types

#: Modules executed from the wheel; every other ``vllm.*`` is a stub.
REAL = {"vllm.v1.core.block_pool", "vllm.v1.core.kv_cache_utils"}
PACKAGES = ("vllm", "vllm.v1", "vllm.v1.core")


class _StubModule(types.ModuleType):
    """Any attribute is a fresh empty class (enough for imports, type
    annotations and decorators that are never called)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "init_logger":
            return logging.getLogger
        return type(name, (), {"__init__": lambda self, *a, **k: None,
                               "__class_getitem__": classmethod(lambda cls, item: cls)})


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


class _StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "vllm" and name not in REAL and name not in PACKAGES:
            return importlib.machinery.ModuleSpec(name, _StubLoader(), is_package=True)
        return None


def load_block_pool(site: str):
    """``(block_pool module, kv_cache_utils module)`` from the wheel at ``site``."""
    sys.path.insert(0, site)
    sys.meta_path.insert(0, _StubFinder())
    for pkg in PACKAGES:  # bare packages: their __init__ imports the world
        m = types.ModuleType(pkg)
        m.__path__ = [f"{site}/{pkg.replace('.', '/')}"]
        sys.modules[pkg] = m
    import vllm.v1.core.block_pool as block_pool
    import vllm.v1.core.kv_cache_utils as kv_cache_utils
    return block_pool, kv_cache_utils
