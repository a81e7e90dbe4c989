"""Run: the records, the Scanner and the executor protocol (``base``); executors that only dispatch
(``local``, ``ray``); the batch loop over them, written once (``batch``)."""
