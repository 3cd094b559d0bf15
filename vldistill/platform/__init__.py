"""Everything Ray: sweep driver, Train worker, callbacks, W&B, report, CLI."""
