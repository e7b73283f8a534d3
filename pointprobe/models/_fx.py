"""One torch.fx log notice that spconv triggers on every run, silenced where it is triggered."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _DropFxTracingNotice(logging.Filter):
    """Drops torch.fx's "is_fx_tracing will return true for both ..." notice (nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("is_fx_tracing will return true")


_FX_NOTICE = _DropFxTracingNotice()


@contextlib.contextmanager
def quiet_fx_tracing_notice() -> Iterator[None]:
    """Around ``spconv.SparseConvTensor(...)``: spconv's class is torch.fx-proxyable, so building one
    calls ``torch.fx.is_fx_tracing()``, which logs a deprecation notice (once per process, on every
    run) that says nothing about this model. The notice is a log record, not a Python warning: a
    filter on torch.fx's logger drops that one message while the block runs."""
    fx_log = logging.getLogger("torch.fx._symbolic_trace")
    fx_log.addFilter(_FX_NOTICE)
    try:
        yield
    finally:
        fx_log.removeFilter(_FX_NOTICE)
