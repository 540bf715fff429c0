"""One module per command; each reads top to bottom as check -> load -> compute -> write."""
