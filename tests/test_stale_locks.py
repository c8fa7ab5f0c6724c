"""The test session removes torch-extension build locks a killed build left behind (DeepSpeed tests hang on them)."""
import os
import time

from conftest import remove_stale_extension_locks


def test_only_old_locks_are_removed(tmp_path):
    old = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "other_op" / "lock"
    flat = tmp_path / "flat_op" / "lock"
    for lock in (old, fresh, flat):
        lock.parent.mkdir(parents=True)
        lock.write_text("")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(flat, (hour_ago, hour_ago))
    assert sorted(remove_stale_extension_locks(tmp_path)) == sorted([old, flat])
    assert not old.exists() and not flat.exists() and fresh.exists()  # a build in progress keeps its lock
    assert remove_stale_extension_locks(tmp_path / "missing") == []
