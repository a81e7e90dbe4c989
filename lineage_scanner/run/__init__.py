"""Run: the batch loop (``batch``), written once, and executors that only dispatch (``local``, ``ray``)."""
