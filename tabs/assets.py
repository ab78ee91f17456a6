"""The page's own CSS and JavaScript: every file in tabs/static/ (sorted by name), given to launch()."""
from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


def launch_assets() -> dict:
    """`css` and `js` for gradio's launch(): the .css files joined, the .js files as one function run on load."""
    css = "\n".join(p.read_text(encoding="utf-8") for p in sorted(STATIC.glob("*.css")))
    scripts = "\n".join(p.read_text(encoding="utf-8") for p in sorted(STATIC.glob("*.js")))
    return {"css": css, "js": f"() => {{\n{scripts}\n}}"}
