"""The allocator setting the Cropper makes for CPU speed (s2cnet.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from s2cnet.runtime import user_chose_allocator


@pytest.mark.parametrize(("env", "chose"), [
    ({}, False),
    ({"PATH": "/usr/bin", "LD_PRELOAD": "/usr/lib/libfoo.so"}, False),
    ({"MALLOC_TRIM_THRESHOLD_": "131072"}, True),
    ({"MALLOC_ARENA_MAX": "2"}, False),
    ({"S2CNET_KEEP_FREED_MEMORY": "0"}, True),
    ({"S2CNET_KEEP_FREED_MEMORY": "1"}, False),  # glibc's variables end in "_"; this one is not an allocator choice
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, True),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, True),
])
def test_a_users_own_allocator_settings_are_respected(env: dict, chose: bool) -> None:
    assert user_chose_allocator(env) is chose


def _applied(env: dict) -> str:
    code = "from s2cnet.runtime import keep_freed_memory as k; print(k(), k())"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "S2CNET_KEEP_FREED_MEMORY"}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or "malloc" in os.environ.get("LD_PRELOAD", ""),
                    reason="glibc's mallopt is Linux-only; a preloaded allocator is left alone by design")
def test_keep_freed_memory_applies_once_and_steps_aside_for_the_user() -> None:
    assert _applied({}) == "True True"
    assert _applied({"MALLOC_TRIM_THRESHOLD_": "131072"}) == "False False"
    assert _applied({"S2CNET_KEEP_FREED_MEMORY": "0"}) == "False False"
