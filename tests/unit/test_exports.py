"""The package's public names: __all__ lists exactly what it re-exports, all documented."""

import fastfanout


def test_all_names_exist_and_are_documented():
    for name in fastfanout.__all__:
        value = getattr(fastfanout, name)
        if name != "__version__":
            assert value.__doc__, f"{name} has no docstring"


def test_every_public_attribute_is_listed():
    public = {name for name in vars(fastfanout) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(fastfanout, name)).__name__ == "module"}
    assert public - modules == set(fastfanout.__all__) - {"__version__"}
