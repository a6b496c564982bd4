"""The public API is exactly what rpc/__init__.py exports."""

from __future__ import annotations

import types

import rpc


def test_all_is_sorted_and_complete():
    public = {
        name
        for name, value in vars(rpc).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from the __future__ import
    }
    assert len(rpc.__all__) == len(set(rpc.__all__))  # ruff's RUF022 keeps it sorted
    assert set(rpc.__all__) == public


def test_every_exception_is_an_rpc_error():
    errors = [getattr(rpc, n) for n in rpc.__all__ if n.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, rpc.RpcError), error
