from fastfanout._ext.store import Store

def check(store: Store) -> bool:
    """Verify every invariant of the store (slow; for tests and the debug build)."""
