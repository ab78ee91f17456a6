"""The run in view on every tab: a side panel that follows the running job (being built: issue 19)."""
from __future__ import annotations

import gradio as gr


def build(blocks: gr.Blocks) -> None:
    """Build the side panel inside `blocks` (outside the tabs) and wire it."""
