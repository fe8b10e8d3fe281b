"""Figure: the Grad-CAM panels `bench explain` wrote into the run's folder, shown as they are."""

from __future__ import annotations

from ..table import Options
from .base import Context, register_section


@register_section("figure_gradcam")
def figure_gradcam(ctx: Context, opts: Options, section) -> None:
    """Figure: every Grad-CAM panel in the run's `explain/` folder (`bench explain` writes them)."""
    from PIL import Image

    from ..figures import Rendered

    explain = ctx.run.path / "explain"
    if explain.is_dir():
        for png in sorted(explain.glob("*.png")):
            with Image.open(png) as im:
                title = im.info.get("Title") or png.stem.replace("__", " · ")

            def read(png=png):
                out = Rendered(png.read_bytes())
                pdf = png.with_suffix(".pdf")
                out.pdf = pdf.read_bytes() if pdf.is_file() else None
                return out

            ctx.figure(title, read)
