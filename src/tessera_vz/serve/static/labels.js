// tessera-vz viewer: label places on the map, then classify the drawn box or find similar places.
// Runs after viewer.js, on its map and state (window.tesseraViewer); the maps are computed by
// POST /api/map/classify and /api/map/similar and drawn as an image overlay with a legend.
(function () {
  "use strict";

  const viewer = window.tesseraViewer;
  const map = viewer.map;
  const state = viewer.state;
  const el = (id) => document.getElementById(id);
  // The server's class colours (serve/maps.py PALETTE): class k is the k-th label, sorted.
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#9a6324", "#469990", "#800000", "#000075"];
  const places = [];
  let downAt = null;
  let request = 0;

  function labels() { return [...new Set(places.map((p) => p.label))].sort(); }
  function colourOf(label) { return PALETTE[labels().indexOf(label) % PALETTE.length]; }

  function status(text, isError) {
    const s = el("map-status");
    s.textContent = text;
    s.className = isError ? "warn" : "hint";
  }

  function swatch(colour) {
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colour;
    return sw;
  }

  function redraw() {
    if (!state.info) { return; } // the map's layers come once /api/info answered
    if (!map.getSource("places")) {
      map.addSource("places", { type: "geojson", data: { type: "FeatureCollection", features: [] } });
      map.addLayer({ id: "places", type: "circle", source: "places",
        paint: { "circle-radius": 5, "circle-color": ["get", "colour"],
          "circle-stroke-color": "#ffffff", "circle-stroke-width": 1.5 } });
    }
    map.getSource("places").setData({ type: "FeatureCollection", features: places.map((p) => ({
      type: "Feature", properties: { label: p.label, colour: colourOf(p.label) },
      geometry: { type: "Point", coordinates: [p.lon, p.lat] } })) });
    const list = el("label-list");
    list.replaceChildren();
    for (const name of labels()) {
      const row = document.createElement("div");
      row.className = "legend-row label";
      row.dataset.label = name;
      const n = places.filter((p) => p.label === name).length;
      row.append(swatch(colourOf(name)), name + ": " + n + " place" + (n === 1 ? "" : "s"));
      list.appendChild(row);
    }
    el("maps").dataset.places = String(places.length);
  }

  function setLabelling(on) {
    state.labelling = on;
    el("label-mode").classList.toggle("active", on);
    map.getCanvas().style.cursor = on ? "copy" : "";
  }

  function clearOverlay() {
    if (map.getLayer("map-overlay")) { map.removeLayer("map-overlay"); }
    if (map.getSource("map-overlay")) { map.removeSource("map-overlay"); }
    el("map-legend").replaceChildren();
    el("map-links").replaceChildren();
  }

  function showLegend(doc) {
    const legend = el("map-legend");
    legend.replaceChildren();
    if (doc.map === "classes") {
      for (const c of doc.legend) {
        const row = document.createElement("div");
        row.className = "legend-row class";
        row.dataset.name = c.name;
        row.dataset.colour = c.colour;
        row.append(swatch(c.colour), c.name + " · " + c.pixels.toLocaleString() + " pixels");
        legend.appendChild(row);
      }
    } else {
      const [lo, hi] = doc.legend;
      const row = document.createElement("div");
      row.className = "legend-row";
      const ramp = document.createElement("span");
      ramp.className = "ramp";
      ramp.style.background = "linear-gradient(to right, " + lo.colour + ", " + hi.colour + ")";
      row.append("cosine " + lo.value.toFixed(3), ramp, hi.value.toFixed(3));
      legend.appendChild(row);
    }
  }

  async function compute(kind) {
    const section = el("maps");
    delete section.dataset.ready;
    if (!state.box) { status("Draw a box first (Shift+drag, or Draw box).", true); return; }
    const body = { year: state.year, bbox: state.box, places, model: el("map-model").value };
    if (kind === "similar") { body.label = el("label-name").value.trim(); }
    const id = ++request;
    status("computing the " + (kind === "similar" ? "similarity" : "class") + " map…");
    try {
      const r = await fetch("/api/map/" + kind, { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      let doc = null;
      try { doc = await r.json(); } catch (e) { doc = null; }
      if (!r.ok) { throw new Error((doc && doc.error) || (r.status + " " + r.statusText)); }
      if (id !== request) { return; }
      clearOverlay();
      map.addSource("map-overlay", { type: "image", url: doc.png, coordinates: doc.corners });
      map.addLayer({ id: "map-overlay", type: "raster", source: "map-overlay",
        paint: { "raster-opacity": 1, "raster-resampling": "nearest", "raster-fade-duration": 0 } },
      "box-line");
      showLegend(doc);
      const a = document.createElement("a");
      a.id = "map-download";
      a.href = doc.download;
      a.setAttribute("download", "");
      a.textContent = "Download the map (GeoTIFF)";
      el("map-links").appendChild(a);
      const acc = doc.report && doc.report.accuracy;
      status((doc.map === "classes" ? doc.model + " classes" : "similarity to " + doc.references +
        " reference(s)") + " · " + doc.shape.join(" × ") + " pixels, " + doc.crs +
        (acc !== null && acc !== undefined ? " · " + doc.report.folds + "-fold accuracy " +
          acc.toFixed(3) : ""));
      section.dataset.map = doc.map;
      map.once("idle", () => { if (id === request) { section.dataset.ready = "1"; } });
    } catch (e) {
      status(e.message, true);
      section.dataset.ready = "error";
    }
  }

  map.on("mousedown", (e) => { downAt = e.point; });
  map.on("click", (e) => {
    if (!state.labelling || state.drawing || e.originalEvent.shiftKey) { return; }
    if (downAt && Math.hypot(downAt.x - e.point.x, downAt.y - e.point.y) > 4) { return; } // a drag
    const label = el("label-name").value.trim();
    if (!label) { status("Type a label name first.", true); return; }
    places.push({ lon: Number(e.lngLat.lng.toFixed(6)), lat: Number(e.lngLat.lat.toFixed(6)), label });
    redraw();
    status(places.length + " labelled place" + (places.length === 1 ? "" : "s") + " (" +
      labels().length + " labels)");
  });
  el("label-mode").addEventListener("click", () => setLabelling(!state.labelling));
  el("labels-clear").addEventListener("click", () => { places.length = 0; redraw(); clearOverlay(); });
  el("map-classify").addEventListener("click", () => compute("classify"));
  el("map-similar").addEventListener("click", () => compute("similar"));

  viewer.places = places;
})();
