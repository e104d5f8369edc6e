"""The `reggaeton` command line: the entry-point layer, above the local stack."""
