"""Compiled native core of fastfanout (built from the Cython sources in ``ext/``)."""
