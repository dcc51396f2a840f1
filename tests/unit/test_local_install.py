"""The embedded server's environment: the stub must link this interpreter's own libpython."""

from __future__ import annotations

import sysconfig

import pytest

from toolkit.core.errors import CompoundError
from toolkit.targets.local import TritonInstall, python_libdir


def test_the_interpreters_libdir_comes_first_on_the_stubs_library_path() -> None:
    env = TritonInstall().environment()
    first = env["LD_LIBRARY_PATH"].split(":")[0]
    assert first == sysconfig.get_config_var("LIBDIR") == python_libdir()


def test_a_python_without_shared_libpython_fails_early_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 0 if name == "Py_ENABLE_SHARED" else real(name))
    with pytest.raises(CompoundError, match="no shared libpython") as raised:
        TritonInstall().environment()
    assert "--enable-shared" in str(raised.value)
