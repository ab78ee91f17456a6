"""Gradio tabs and shared widgets. UI wiring only: anything that computes belongs in core/."""
