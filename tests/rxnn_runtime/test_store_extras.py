"""A redis:// store without the redis package names the extra to install."""

import sys

import pytest

from rxnn_runtime.stores import open_store


class _NoRedis:
    """A meta-path finder that makes `import redis` fail as it does when the package is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "redis" or name.startswith("redis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def no_redis(monkeypatch):
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "rxnn_runtime.stores.redis_store", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoRedis(), *sys.meta_path])


def test_missing_redis_names_the_extra(no_redis):
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'rxnn-runtime\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


def test_missing_redis_still_hides_the_password(no_redis):
    with pytest.raises(ModuleNotFoundError) as info:
        open_store("redis://user:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in str(info.value) and "user:***@127.0.0.1" in str(info.value)
