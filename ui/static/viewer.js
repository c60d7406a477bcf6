// The side-by-side viewer page (ui/viewer.py): one OpenSeadragon viewer per panel of
// window.VIEW_SPEC = {link, panels: [{dzi, mpp (level-0 µm/px or null), marks, focus}]}.
// Per panel: a scale bar (a round length in µm/mm), the magnification-equivalent (20x =
// 0.5 µm per screen pixel) and µm per screen pixel, a cue past the scan's resolution, and a
// status whose data-state is loading / ready / failed (data-tiles: tiles drawn). "Link panels"
// makes the other panels follow the one under the pointer over the same physical field: the
// same width in µm, and the same shift in µm from where each stood when linking began.
(function () {
  "use strict";
  const SPEC = window.VIEW_SPEC;
  const panels = SPEC.panels;
  const linkBox = document.getElementById("link");
  const SCALE_PX = 100; // target scale bar length, CSS px
  let leader = 0;
  let anchors = null; // per panel: its field centre (µm) when linking began

  function niceLength(um) {
    const exp = Math.pow(10, Math.floor(Math.log10(um)));
    for (const m of [5, 2, 1]) if (m * exp <= um * (1 + 1e-9)) return m * exp;
    return exp;
  }
  function lengthLabel(um) {
    const g = function (v) { return String(Number(v.toPrecision(6))); };
    return um >= 1000 ? g(um / 1000) + " mm" : g(um) + " µm";
  }
  function opened(v) { return v.world.getItemCount() > 0; }

  // The panel's field in µm from the slide's top-left corner (level-0 px when scale unknown).
  function fieldUm(i) {
    const v = window.viewers[i];
    const r = v.viewport.viewportToImageRectangle(v.viewport.getBounds(true));
    const m = panels[i].mpp || 1;
    return {x: r.x * m, y: r.y * m, w: r.width * m, h: r.height * m};
  }
  window.fieldUm = fieldUm;

  function centre(f) { return [f.x + f.w / 2, f.y + f.h / 2]; }
  function linkable() { return panels.every(function (p) { return p.mpp; }); }
  function linked() { return linkBox.checked && linkable(); }
  function allOpen() { return window.viewers.every(opened); }

  function startLink() {
    anchors = window.viewers.map(function (_, i) { return centre(fieldUm(i)); });
    follow(leader);
  }

  function follow(src) {
    if (!linked() || !allOpen() || anchors === null) return;
    const f = fieldUm(src), c = centre(f);
    const dx = c[0] - anchors[src][0], dy = c[1] - anchors[src][1];
    window.viewers.forEach(function (v, j) {
      if (j === src) return;
      const m = panels[j].mpp, W = v.world.getItemAt(0).getContentSize().x;
      const cx = (anchors[j][0] + dx) / m, cy = (anchors[j][1] + dy) / m; // level-0 px
      v.viewport.zoomTo(W / (f.w / m), null, true);
      v.viewport.panTo(new OpenSeadragon.Point(cx / W, cy / W), true);
    });
  }

  function readout(i) {
    const v = window.viewers[i], p = panels[i];
    if (!opened(v)) return;
    const zoom = v.viewport.viewportToImageZoom(v.viewport.getZoom(true)); // screen px / image px
    const scale = document.getElementById("scale" + i);
    const bar = scale.querySelector(".sbar"), label = scale.querySelector(".slabel");
    const cue = document.getElementById("cue" + i);
    const out = document.getElementById("readout" + i);
    if (zoom > 1.01) {
      cue.hidden = false;
      cue.textContent = "beyond scan resolution (" + zoom.toFixed(1) + "× digital zoom)";
    } else {
      cue.hidden = true;
    }
    if (!p.mpp) {
      bar.style.width = "0px";
      label.textContent = "scale unknown";
      scale.dataset.um = "";
      out.textContent = "scale unknown (no µm/px for this slide)";
      return;
    }
    const umPerScreenPx = p.mpp / zoom;
    const length = niceLength(umPerScreenPx * SCALE_PX);
    bar.style.width = Math.round(length / umPerScreenPx) + "px";
    label.textContent = lengthLabel(length);
    scale.dataset.um = String(length);
    const mag = 10 / umPerScreenPx;
    out.textContent = "≈" + (mag >= 10 ? mag.toFixed(0) : mag.toPrecision(2)) + "× · " +
      umPerScreenPx.toPrecision(3) + " µm per screen pixel";
  }

  window.viewers = panels.map(function (p, i) {
    const v = OpenSeadragon({
      id: "osd" + i, prefixUrl: "/static/openseadragon/images/", tileSources: p.dzi,
      drawer: "canvas", showNavigator: true, showRotationControl: false,
      maxZoomPixelRatio: 2, visibilityRatio: 0.5, crossOriginPolicy: false
    });
    const status = document.getElementById("status" + i);
    let tiles = 0;
    function setState(state, text) { status.dataset.state = state; status.textContent = text; }
    v.addHandler("tile-loaded", function () { tiles += 1; status.dataset.tiles = String(tiles); });
    v.addHandler("fully-loaded-change", function (e) {
      if (status.dataset.state !== "failed") setState(e.fullyLoaded ? "ready" : "loading",
        e.fullyLoaded ? "ready" : "loading…");
    });
    v.addHandler("open-failed", function (e) { setState("failed", "cannot open: " + e.message); });
    v.addHandler("tile-load-failed", function (e) {
      setState("failed", "some tiles could not be loaded (" + (e.message || "server error") + ")");
    });
    v.addHandler("open", function () {
      const w = v.world.getItemAt(0).getContentSize().x;
      p.marks.forEach(function (m) {
        const el = document.createElement("div");
        el.className = "mark";
        if (m.label) {
          const s = document.createElement("span"); s.textContent = m.label; el.appendChild(s);
        }
        v.addOverlay({element: el, location: new OpenSeadragon.Rect(m.x / w, m.y / w, m.w / w, m.h / w)});
      });
      if (p.focus) {
        const f = p.focus;
        v.viewport.fitBounds(new OpenSeadragon.Rect(f.x / w, f.y / w, f.w / w, f.h / w), true);
      }
      readout(i);
      if (allOpen() && linked()) startLink();
    });
    v.addHandler("viewport-change", function () {
      readout(i);
      if (i === leader) follow(i);
    });
    const cell = document.getElementById("osd" + i);
    ["pointerenter", "pointerdown", "wheel", "focusin"].forEach(function (ev) {
      cell.addEventListener(ev, function () { leader = i; }, {capture: true, passive: true});
    });
    return v;
  });

  if (!linkable()) {
    linkBox.checked = false;
    linkBox.disabled = true;
    document.getElementById("linkhint").textContent =
      "linking needs the µm/px of every slide (scale unknown here)";
  }
  linkBox.addEventListener("change", function () {
    if (linkBox.checked && allOpen()) startLink(); else anchors = null;
  });
})();
