"""Data: TOFU and the built-in benchmark, prompt templates, tokenisation and collation."""
