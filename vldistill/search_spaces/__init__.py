"""YAML search spaces shipped with vldistill, and their loader/validator."""
