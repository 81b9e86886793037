"""The interactive report page: one self-contained ``index.html`` per run (plotly.js beside it,
no network), the same page across runs (``dynmon compare``), and a watcher that rewrites it as a
run grows (``dynmon report --watch``)."""

from dynmon.page.build import write_compare_page, write_run_page
from dynmon.page.envelope import Envelope, envelope
from dynmon.page.tail import RunTail
from dynmon.page.watch import watch

__all__ = ["Envelope", "RunTail", "envelope", "watch", "write_compare_page", "write_run_page"]
