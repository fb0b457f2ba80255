"""The package's public names: __all__ lists exactly what it re-exports, all documented."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import fastfanout


def test_a_bare_import_loads_nothing_heavy():
    # the command line holds its stop signals before the native core and zmq load
    code = ("import sys, fastfanout; heavy = [m for m in sys.modules if m.startswith("
            "('zmq', 'click', 'fastfanout._ext', 'fastfanout.client'))]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
    assert "Broker" in dir(fastfanout)
    assert fastfanout.aio.connect   # a submodule by its name, as before


def test_all_names_exist_and_are_documented():
    for name in fastfanout.__all__:
        value = getattr(fastfanout, name)
        if name != "__version__":
            assert value.__doc__, f"{name} has no docstring"


def test_every_public_attribute_is_listed():
    for name in fastfanout.__all__:   # the names load on first use
        getattr(fastfanout, name)
    public = {name for name in vars(fastfanout) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(fastfanout, name)).__name__ == "module"}
    assert public - modules == set(fastfanout.__all__) - {"__version__"}


def _package_exceptions() -> set[type[BaseException]]:
    """Every exception class defined in any module of the package (extensions included)."""
    found: set[type[BaseException]] = set()
    for info in pkgutil.walk_packages(fastfanout.__path__, "fastfanout."):
        if info.name in ("fastfanout.__main__",):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__.startswith("fastfanout")):
                found.add(value)
    return found


def test_every_exception_is_exported_and_a_fastfanout_error():
    exceptions = _package_exceptions()
    assert fastfanout.BrokenConnection in exceptions   # the walk does reach the modules
    for cls in exceptions:
        assert cls.__module__ == "fastfanout.errors", f"{cls} is defined outside errors.py"
        assert getattr(fastfanout, cls.__name__, None) is cls, f"{cls} is not exported"
        assert cls.__name__ in fastfanout.__all__
        assert issubclass(cls, fastfanout.FastFanoutError), f"{cls} is no FastFanoutError"
        assert isinstance(cls.code, str) and cls.code, f"{cls} has no code"


def test_transport_errors_are_os_errors():
    assert issubclass(fastfanout.TransportError, OSError)
    assert issubclass(fastfanout.PeerLost, ConnectionError)
    assert issubclass(fastfanout.PeerGone, ConnectionError)
    assert str(fastfanout.TransportError("cannot bind")) == "cannot bind"


def test_every_exception_is_documented_with_its_code():
    text = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    for cls in _package_exceptions():
        assert f"`{cls.__name__}`" in text, f"{cls.__name__} is missing from docs/errors.md"
        assert f"`{cls.code}`" in text, f"{cls.code} is missing from docs/errors.md"
