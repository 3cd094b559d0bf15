"""Everything Ray: sweep driver, Train worker, callbacks, W&B, CLI; and the Ray-free report (``report/``)."""
