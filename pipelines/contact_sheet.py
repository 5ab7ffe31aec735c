"""A self-contained HTML contact sheet of a crop_bucket output: each photo with its crop boxes drawn,
the thumbnail of every ratio, and the error rows with their reasons. Images are inlined (data: URIs),
so the page still works after the demo's object store is gone."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from pipelines.photos import thumbnail_jpeg, thumbnail_path
from pipelines.storage import Location, read_bytes, read_output
from s2cnet.overlay import hex_colour, ratio_colour

COLUMNS = ["key", "width", "height", "ratio", "x1", "y1", "x2", "y2", "score", "model_version", "error"]


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _overlay(image: Image.Image, crops: list[dict], colours: dict[str, str], long_side: int = 360) -> bytes:
    """The photo, ``long_side`` px on its long side, with every ratio's box outlined in its colour."""
    s = min(1.0, long_side / max(image.size))
    small = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BILINEAR)
    draw = ImageDraw.Draw(small)
    for c in crops:
        box = [round(v * s) for v in (c["x1"], c["y1"], c["x2"] - 1, c["y2"] - 1)]
        draw.rectangle(box, outline=colours[c["ratio"]], width=3)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_contact_sheet(output: Location, source: Location, html_path: str | Path,
                        thumbnails: Location | None = None, max_photos: int = 100, title: str = "ugc-crop") -> Path:
    """Render ``output``'s rows (photos from ``source``; thumbnails when given, else cut afresh) to HTML."""
    from s2cnet.imageio import load_image

    rows = read_output(output, COLUMNS).to_pylist()
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_key[r["key"]].append(r)
    ratios = sorted({r["ratio"] for r in rows if r["ratio"]}, key=lambda x: [r["ratio"] for r in rows].index(x))
    colours = {r: hex_colour(ratio_colour(r)) for r in ratios}  # the colours the overlay and the page use
    src_fs = source.filesystem()
    thumb_fs = thumbnails.filesystem() if thumbnails else None
    cards, errors = [], []
    for key in sorted(by_key)[:max_photos]:
        krows = by_key[key]
        for r in krows:
            if r["error"]:
                errors.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(r['ratio'] or 'all')}</td>"
                              f"<td>{html.escape(r['error'])}</td></tr>")
        good = [r for r in krows if r["x1"] is not None]
        if not good:
            continue
        try:
            image = load_image(read_bytes(src_fs, source.path_of(key)))
        except Exception as e:  # the photo changed since the run: show what we can
            errors.append(f"<tr><td>{html.escape(key)}</td><td>sheet</td><td>{html.escape(str(e))}</td></tr>")
            continue
        tiles = []
        for r in good:
            try:
                jpeg = read_bytes(thumb_fs, thumbnail_path(thumbnails.root, key, r["ratio"])) if thumb_fs else None
            except OSError:
                jpeg = None
            jpeg = jpeg or thumbnail_jpeg(image, (r["x1"], r["y1"], r["x2"], r["y2"]), 200)
            tiles.append(f'<figure><img src="{_data_uri(jpeg)}" style="border-color:{colours[r["ratio"]]}">'
                         f'<figcaption>{html.escape(r["ratio"])} &middot; {r["score"]:.3f}</figcaption></figure>')
        cards.append(f'<section><h3>{html.escape(key)} <small>{good[0]["width"]}&times;{good[0]["height"]}</small></h3>'
                     f'<div class="row"><figure><img src="{_data_uri(_overlay(image, good, colours))}">'
                     f'<figcaption>original</figcaption></figure>{"".join(tiles)}</div></section>')
    legend = " ".join(f'<span style="color:{c}">&#9632; {html.escape(r)}</span>' for r, c in colours.items())
    versions = sorted({r["model_version"] for r in rows if r["model_version"]})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)} contact sheet</title>
<style>body{{font-family:sans-serif;margin:1em}} .row{{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end}}
figure{{margin:0}} figure img{{max-height:180px;border:3px solid #ccc}} figcaption{{font-size:12px;text-align:center}}
section{{border-bottom:1px solid #ddd;padding:6px 0}} table{{border-collapse:collapse}}
td{{border:1px solid #ccc;padding:2px 6px}}</style>
</head><body><h1>{html.escape(title)} contact sheet</h1>
<p>{len(by_key)} photos, {len(rows)} rows, model {html.escape(", ".join(versions))}. Boxes: {legend}</p>
{"".join(cards)}
<h2>Errors ({len(errors)})</h2><table><tr><th>key</th><th>ratio</th><th>reason</th></tr>{"".join(errors)}</table>
</body></html>"""
    out = Path(html_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
