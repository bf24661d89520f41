"""Helper for tests that force or watch the QP backward's host kernel."""


def count_host_kkt_calls(monkeypatch) -> list:
    """Record every call of the QP backward's host kernel (``kktbridge.core._structured``; its
    first operand's shape) in the returned list."""
    from kktbridge.core import _structured

    calls = []
    kernel = _structured._host_saddle
    monkeypatch.setattr(_structured, "_host_saddle", lambda *args: calls.append(args[0].shape) or kernel(*args))
    return calls
