"""Deep Zoom tile server for the side-by-side viewer (OpenSeadragon, vendored in ``ui/static``).

A :class:`TileServer` is a small threaded HTTP server (standard library) that serves:

- ``/static/openseadragon/...``: the vendored OpenSeadragon files (a fixed whitelist);
- ``/dzi/<token>.dzi`` and ``/dzi/<token>_files/<level>/<col>_<row>.jpeg``: Deep Zoom
  descriptors and JPEG tiles of a *registered* slide (``openslide.deepzoom.DeepZoomGenerator``,
  254 px tiles with 1 px overlap, so a tile is at most 256 px); level ``L`` is the full level-0
  resolution at the last level;
- ``/view/<view_id>``: an HTML page with one OpenSeadragon viewer per slide of a registered
  view, side by side, with the view's rectangles (top-attention patches, level-0 px) overlaid;
  per panel its role and details, a scale bar, the magnification-equivalent and µm per screen
  pixel, a cue past the scan's resolution and a status (``data-state`` loading/ready/failed);
  a "link panels" toggle makes the panels follow each other's physical field (µm), not pixels.
  The page's behaviour is ``static/viewer.js``.

Nothing is served by path: slides are registered (:meth:`TileServer.register`) and addressed by
a random token, views by the hash of their content; everything else is 404. No network beyond
the bound address; OpenSeadragon comes from the repository.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

STATIC_DIR = Path(__file__).resolve().parent / "static"
TILE_SIZE, OVERLAP, TILE_QUALITY = 254, 1, 80
MAX_OPEN_SLIDES = 16
MAX_VIEWS = 256
_TILE = re.compile(r"^/dzi/([A-Za-z0-9_-]+)_files/(\d+)/(\d+)_(\d+)\.jpeg$")
_DZI = re.compile(r"^/dzi/([A-Za-z0-9_-]+)\.dzi$")
_VIEW = re.compile(r"^/view/([0-9a-f]{16})$")
_MIME = {
    ".js": "application/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".txt": "text/plain",
}


@dataclass
class ViewSlide:
    """One panel of a view: a registered ``token``, its ``title`` ("role: slide"), ``marks``:
    rectangles ``{"x", "y", "w", "h"}`` in level-0 px with an optional ``"label"``, ``focus``:
    the level-0 rectangle the panel opens on (None: the whole slide), ``mpp``: the slide's
    level-0 µm/px (None: scale unknown, said so on the panel) and ``details`` (e.g. similarity
    and diagnosis, one line)."""

    token: str
    title: str
    marks: list[dict] = field(default_factory=list)
    focus: dict | None = None  # {"x", "y", "w", "h"} level-0 px shown on opening (else all)
    mpp: float | None = None
    details: str = ""


class TileServer:
    """Serve Deep Zoom tiles of registered slides on ``host:port`` (0 = a free port) from a
    daemon thread. ``url`` is the base URL as seen from this machine."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, str] = {}  # token -> slide path
        self._tokens: dict[str, str] = {}  # path -> token
        self._open: OrderedDict[str, tuple] = OrderedDict()  # token -> (slide, generator)
        self._views: OrderedDict[str, tuple[list[ViewSlide], bool]] = OrderedDict()
        handler = type("Handler", (_Handler,), {"tiles": self})
        self.httpd = ThreadingHTTPServer((host, int(port)), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, daemon=True, name=f"tile-server-{self.port}"
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            for slide, _ in self._open.values():
                slide.close()
            self._open.clear()

    # -- registration --------------------------------------------------------------------
    def register(self, path: str | Path) -> str:
        """A token for slide ``path`` (the same token for the same path)."""
        p = str(Path(path).resolve())
        with self._lock:
            if p not in self._tokens:
                token = secrets.token_urlsafe(12)
                self._tokens[p], self._paths[token] = token, p
            return self._tokens[p]

    def unregister(self, path: str | Path) -> None:
        """Forget ``path`` (e.g. a deleted upload) and close it."""
        p = str(Path(path).resolve())
        with self._lock:
            token = self._tokens.pop(p, None)
            if token is not None:
                self._paths.pop(token, None)
                opened = self._open.pop(token, None)
                if opened is not None:
                    opened[0].close()

    def add_view(self, panels: list[ViewSlide], link: bool = False) -> str:
        """Register a view (one panel per slide; ``link``: the panels open linked); returns its
        id (stable for equal content)."""
        doc = json.dumps([[p.__dict__ for p in panels], link], sort_keys=True, default=str)
        vid = hashlib.sha256(doc.encode()).hexdigest()[:16]
        with self._lock:
            self._views[vid] = (panels, bool(link))
            self._views.move_to_end(vid)
            while len(self._views) > MAX_VIEWS:
                self._views.popitem(last=False)
        return vid

    def view_url(self, panels: list[ViewSlide], link: bool = False) -> str:
        return f"{self.url}/view/{self.add_view(panels, link)}"

    # -- serving -------------------------------------------------------------------------
    def generator(self, token: str):
        """The (cached) DeepZoomGenerator of a registered token, or None."""
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        with self._lock:
            if token in self._open:
                self._open.move_to_end(token)
                return self._open[token][1]
            path = self._paths.get(token)
        if path is None:
            return None
        slide = openslide.open_slide(path)
        gen = DeepZoomGenerator(slide, TILE_SIZE, OVERLAP, limit_bounds=True)
        with self._lock:
            self._open[token] = (slide, gen)
            while len(self._open) > MAX_OPEN_SLIDES:
                old, _ = self._open.popitem(last=False)[1]
                old.close()
        return gen

    def offset(self, token: str) -> tuple[int, int]:
        """Level-0 (x, y) of the slide's bounds (Deep Zoom coordinates start there)."""
        import openslide

        gen = self.generator(token)
        with self._lock:
            slide = self._open[token][0] if gen is not None and token in self._open else None
        if slide is None:
            return 0, 0
        props = slide.properties
        return (
            int(props.get(openslide.PROPERTY_NAME_BOUNDS_X, 0) or 0),
            int(props.get(openslide.PROPERTY_NAME_BOUNDS_Y, 0) or 0),
        )

    def view(self, vid: str) -> tuple[list[ViewSlide], bool] | None:
        """(panels, link) of a registered view, or None."""
        with self._lock:
            return self._views.get(vid)


class _Handler(BaseHTTPRequestHandler):
    tiles: TileServer
    server_version = "threads-search-tiles"

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            if m := _TILE.match(path):
                self._tile(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
            elif m := _DZI.match(path):
                gen = self.tiles.generator(m.group(1))
                if gen is None:
                    return self._send(404, b"unknown slide", "text/plain")
                self._send(200, gen.get_dzi("jpeg").encode(), "application/xml")
            elif m := _VIEW.match(path):
                view = self.tiles.view(m.group(1))
                if view is None:
                    return self._send(404, b"unknown view (reload the page)", "text/plain")
                panels, link = view
                offsets = [self.tiles.offset(p.token) for p in panels]
                page = view_page(panels, offsets, link)
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif path.startswith("/static/"):
                self._static(path[len("/static/") :])
            else:
                self._send(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # an unreadable slide or region: a clear 500, the server lives on
            self._send(500, f"cannot serve {path}: {type(e).__name__}: {e}".encode(), "text/plain")

    def _tile(self, token: str, level: int, col: int, row: int) -> None:
        gen = self.tiles.generator(token)
        if gen is None:
            return self._send(404, b"unknown slide", "text/plain")
        if level >= gen.level_count:
            return self._send(404, b"no such level", "text/plain")
        cols, rows = gen.level_tiles[level]
        if col >= cols or row >= rows:
            return self._send(404, b"no such tile", "text/plain")
        tile = gen.get_tile(level, (col, row)).convert("RGB")
        buf = io.BytesIO()
        tile.save(buf, "JPEG", quality=TILE_QUALITY)
        self._send(200, buf.getvalue(), "image/jpeg", cache=True)

    def _static(self, rel: str) -> None:
        allowed = {
            p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.is_file()
        }
        p = allowed.get(rel)
        if p is None:
            return self._send(404, b"not found", "text/plain")
        mime = _MIME.get(p.suffix, "application/octet-stream")
        self._send(200, p.read_bytes(), mime, cache=True)

    def _send(self, code: int, body: bytes, mime: str, cache: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)


def view_page(
    panels: list[ViewSlide], offsets: list[tuple[int, int]] | None = None, link: bool = False
) -> str:
    """The viewer HTML: one OpenSeadragon viewer per panel; marks drawn as numbered boxes
    (level-0 px, shifted by the panel's bounds ``offsets``); ``link``: the "link panels" box
    starts ticked. Behaviour in ``static/viewer.js`` (``window.viewers``, ``window.fieldUm``)."""
    offsets = offsets or [(0, 0)] * len(panels)
    cells = "".join(
        f'<div class="cell"><div class="title">{html.escape(p.title)}</div>'
        f'<div class="details">{html.escape(p.details) or "&nbsp;"}</div>'
        f'<div class="frame"><div id="osd{i}" class="osd"></div>'
        f'<div class="scale" id="scale{i}"><div class="sbar"></div><span class="slabel"></span>'
        f'</div><div class="cue" id="cue{i}" hidden></div></div>'
        f'<div class="foot"><span class="readout" id="readout{i}"></span>'
        f'<span class="status" id="status{i}" data-state="loading" data-tiles="0">loading…'
        f"</span></div></div>"
        for i, p in enumerate(panels)
    )
    spec = json.dumps(
        {
            "link": bool(link),
            "panels": [
                {
                    "dzi": f"/dzi/{p.token}.dzi",
                    "mpp": p.mpp if p.mpp and p.mpp > 0 else None,
                    "marks": [{**m, "x": m["x"] - ox, "y": m["y"] - oy} for m in p.marks],
                    "focus": None
                    if p.focus is None
                    else {**p.focus, "x": p.focus["x"] - ox, "y": p.focus["y"] - oy},
                }
                for p, (ox, oy) in zip(panels, offsets, strict=True)
            ],
        }
    )
    checked = " checked" if link else ""
    return (
        _PAGE.replace("__CELLS__", cells)
        .replace("__SPEC__", spec.replace("</", "<\\/"))
        .replace("__CHECKED__", checked)
    )


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>threads-search viewer</title>
<link rel="stylesheet" href="/static/viewer.css">
<script src="/static/openseadragon/openseadragon.min.js"></script>
</head>
<body><div class="bar"><label><input type="checkbox" id="link"__CHECKED__> Link panels</label>
<span class="hint" id="linkhint">zoom and pan together over the same physical field (µm)</span>
</div>
<div class="row">__CELLS__</div>
<script>window.VIEW_SPEC = __SPEC__;</script>
<script src="/static/viewer.js"></script>
</body></html>
"""
