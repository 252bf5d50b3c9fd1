"""Thin LSP handlers, one module per concern; each exposes `register(server)`."""
