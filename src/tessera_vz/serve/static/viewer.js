// tessera-vz viewer: tile cells, gaps, pixel embeddings and box previews over the /api/* endpoints.
// Plain script (no build step) on the vendored MapLibre GL JS UMD bundle (global `maplibregl`).
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const ZONE_COLOURS = ["#2f6fde", "#e3892b", "#2a9d5c", "#9b51e0", "#c23b73", "#168a99",
    "#8c6d1f", "#5b6bd6", "#d9534f", "#3c8d40", "#b5651d", "#6a4c93"];
  const BACKGROUND = "#e8ecf1";
  // Land and coasts from the app's own Natural Earth layer: the map shows where it is offline.
  const LAND = "#dedacb";
  const COAST = "#8f8a7a";
  const LAND_URL = "/data/land-50m.geojson";
  const M_PER_DEG_LAT = 110574.0;
  const M_PER_DEG_LON = 111320.0;

  const state = { info: null, year: null, box: null, drawing: false, start: null, previewUrl: null };
  const el = (id) => document.getElementById(id);

  function zoneColour(zone) { return ZONE_COLOURS[zone % ZONE_COLOURS.length]; }

  function setStatus(text, isError) {
    const s = el("status");
    s.textContent = text || "";
    s.className = isError ? "error" : "";
  }

  async function getJSON(url) {
    const r = await fetch(url);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) { throw new Error((body && body.error) || (r.status + " " + r.statusText)); }
    return body;
  }

  function svg(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) { node.setAttribute(k, String(v)); }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  // About how many 10 m pixels a lon/lat box holds (the server's own estimate).
  function pixels(b) {
    const mid = ((b[1] + b[3]) / 2) * Math.PI / 180;
    return (b[2] - b[0]) * M_PER_DEG_LON * Math.max(Math.cos(mid), 0) * (b[3] - b[1]) * M_PER_DEG_LAT / 100;
  }

  // ---- map --------------------------------------------------------------------------------

  const map = new maplibregl.Map({
    container: "map",
    style: { version: 8, sources: {}, layers: [
      { id: "background", type: "background", paint: { "background-color": BACKGROUND } }] },
    center: [0, 20],
    zoom: 1,
    boxZoom: false,
    attributionControl: false,
    fadeDuration: 0,
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-left");
  map.addControl(new maplibregl.ScaleControl(), "bottom-left");
  const empty = { type: "FeatureCollection", features: [] };

  function addLayers() {
    const zones = state.info.zones;
    const colour = zones.length
      ? ["match", ["get", "zone"], ...zones.flatMap((z) => [z, zoneColour(z)]), "#888888"]
      : "#888888";
    map.addSource("land", { type: "geojson", data: new URL(LAND_URL, location.href).href });
    map.addLayer({ id: "land-fill", type: "fill", source: "land", paint: { "fill-color": LAND } });
    map.addLayer({ id: "land-line", type: "line", source: "land",
      paint: { "line-color": COAST, "line-width": 1 } });
    setRaster();
    map.addSource("tiles", { type: "geojson", data: empty });
    map.addSource("gaps", { type: "geojson", data: empty });
    map.addSource("box", { type: "geojson", data: empty });
    map.addSource("click", { type: "geojson", data: empty });
    map.addLayer({ id: "tiles-fill", type: "fill", source: "tiles",
      paint: { "fill-color": colour, "fill-opacity": 0.35 } });
    map.addLayer({ id: "tiles-line", type: "line", source: "tiles",
      paint: { "line-color": colour, "line-width": 1 } });
    map.addLayer({ id: "gaps-fill", type: "fill", source: "gaps",
      paint: { "fill-color": "#d64545", "fill-opacity": 0.45 } });
    map.addLayer({ id: "gaps-line", type: "line", source: "gaps",
      paint: { "line-color": "#d64545", "line-width": 1.5, "line-dasharray": [2, 1] } });
    map.addLayer({ id: "box-line", type: "line", source: "box",
      paint: { "line-color": "#1d2733", "line-width": 2 } });
    map.addLayer({ id: "click-point", type: "circle", source: "click",
      paint: { "circle-radius": 5, "circle-color": "#f0b429", "circle-stroke-color": "#1d2733",
        "circle-stroke-width": 2 } });
    const legend = el("legend-zones");
    legend.replaceChildren();
    for (const z of zones) {
      const row = document.createElement("div");
      row.className = "legend-row";
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = zoneColour(z);
      row.append(sw, "UTM zone " + z);
      legend.appendChild(row);
    }
  }

  // An online basemap only when the server was given one and a tile of it loads the way
  // MapLibre loads tiles (fetch, so CORS applies); otherwise the map stays offline.
  async function tryBasemap(template) {
    if (!template) { return; }
    const note = el("basemap-note");
    const url = template.replace("{z}", "0").replace("{x}", "0").replace("{y}", "0");
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    try {
      const r = await fetch(url, { mode: "cors", signal: abort.signal });
      if (!r.ok) { throw new Error(r.status + " " + r.statusText); }
    } catch (e) {
      note.textContent = "basemap unreachable: drawn without it";
      return;
    } finally {
      clearTimeout(timer);
    }
    map.addSource("basemap", { type: "raster", tiles: [template], tileSize: 256, maxzoom: 19 });
    map.addLayer({ id: "basemap", type: "raster", source: "basemap",
      paint: { "raster-opacity": 0.8 } }, map.getLayer("coverage") ? "coverage" : "tiles-fill");
    note.textContent = "basemap: " + new URL(template.replace(/[{}]/g, "")).host;
  }

  // A year with more tiles than one answer may hold is drawn as raster tiles of its coverage
  // (/api/coverage/{year}/{z}/{x}/{y}.png: the same size whatever the tile count) below
  // VECTOR_ZOOM, and as cells of the tiles in view from there.
  const VECTOR_ZOOM = 7;
  function large() {
    const y = String(state.year);
    return Math.max(state.info.tiles[y] || 0, (state.info.gaps || {})[y] || 0) >
      state.info.limits.features;
  }

  function setRaster() {
    if (map.getLayer("coverage")) { map.removeLayer("coverage"); }
    if (map.getSource("coverage")) { map.removeSource("coverage"); }
    if (!large()) { return; }
    const url = new URL("/api/coverage/" + state.year + "/{z}/{x}/{y}.png", location.href).href;
    map.addSource("coverage", { type: "raster", tiles: [url.replace(/%7B/g, "{").replace(/%7D/g, "}")],
      tileSize: 256, maxzoom: 12 });
    map.addLayer({ id: "coverage", type: "raster", source: "coverage", maxzoom: VECTOR_ZOOM,
      paint: { "raster-opacity": 1, "raster-resampling": "nearest", "raster-fade-duration": 0 } },
    map.getLayer("tiles-fill") ? "tiles-fill" : undefined);
  }

  // Tile cells and gaps: the whole year when it is small enough, else those in view.
  let coverageRequest = 0;
  async function loadCoverage() {
    const year = state.year;
    const id = ++coverageRequest;
    const total = state.info.tiles[String(year)] || 0;
    let query = "year=" + year;
    if (large()) {
      if (map.getZoom() < VECTOR_ZOOM) {
        map.getSource("tiles").setData(empty);
        map.getSource("gaps").setData(empty);
        setStatus(total.toLocaleString() + " tiles in " + year +
          " (coverage drawn as a raster): zoom in to see their cells");
        map.once("idle", () => {
          if (id === coverageRequest) { document.body.dataset.tiles = String(year); }
        });
        return;
      }
      const b = map.getBounds();
      query += "&bbox=" + [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]
        .map((v, i) => Math.max(Math.min(v, i % 2 ? 90 : 180), i % 2 ? -90 : -180).toFixed(4)).join(",");
    }
    setStatus("loading tiles of " + year + "…");
    try {
      const [tiles, gaps] = await Promise.all([
        getJSON("/api/tiles?" + query), getJSON("/api/gaps?" + query)]);
      if (id !== coverageRequest) { return; }
      map.getSource("tiles").setData(tiles);
      map.getSource("gaps").setData(gaps);
      const count = (n, word) => n.toLocaleString() + " " + word + (n === 1 ? "" : "s");
      setStatus(count(tiles.features.length, "tile") + ", " + count(gaps.features.length, "gap") +
        " in " + year);
      map.once("idle", () => {
        if (id === coverageRequest) { document.body.dataset.tiles = String(year); }
      });
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  // ---- a pixel ----------------------------------------------------------------------------

  function plotEmbedding(values) {
    const w = 316, h = 150, pad = 14;
    const box = svg("svg", { width: w, height: h, viewBox: "0 0 " + w + " " + h, id: "embedding-plot" });
    const finite = values.filter((v) => v !== null);
    const top = Math.max(1e-9, ...finite.map((v) => Math.abs(v)));
    const zero = pad + (h - 2 * pad) / 2;
    const scale = (h - 2 * pad) / 2 / top;
    const bw = (w - 2 * pad) / values.length;
    svg("line", { x1: pad, x2: w - pad, y1: zero, y2: zero, stroke: "#9aa5b1" }, box);
    values.forEach((v, i) => {
      const attrs = { class: "bar", "data-band": i, "data-value": v === null ? "null" : String(v),
        x: (pad + i * bw).toFixed(2), width: Math.max(bw - 0.3, 0.5).toFixed(2) };
      if (v === null) {
        Object.assign(attrs, { y: zero, height: 0 });
      } else {
        const hh = Math.abs(v) * scale;
        Object.assign(attrs, { y: (v >= 0 ? zero - hh : zero).toFixed(3), height: hh.toFixed(3),
          fill: v >= 0 ? "#2f6fde" : "#d64545" });
      }
      const bar = svg("rect", attrs, box);
      svg("title", {}, bar).textContent = "band " + i + ": " + (v === null ? "no data" : v.toPrecision(4));
    });
    svg("text", { x: pad, y: pad - 3 }, box).textContent = "+" + top.toPrecision(3);
    svg("text", { x: pad, y: h - 3 }, box).textContent = "−" + top.toPrecision(3) +
      "   bands 0–" + (values.length - 1);
    return box;
  }

  function colourOf(v, top) {
    if (v === null) { return "#c9d3de"; }
    const t = Math.max(-1, Math.min(1, v / top));
    const a = Math.round(255 * (1 - Math.abs(t)));
    return t >= 0 ? `rgb(${a},${a},255)` : `rgb(255,${a},${a})`;
  }

  function plotSeries(series) {
    const bands = Math.max(1, ...series.map((s) => (s.embedding ? s.embedding.length : 0)));
    const left = 34, w = 316, rowH = 14;
    const h = series.length * rowH + 14;
    const box = svg("svg", { width: w, height: h, id: "series-plot" });
    const all = series.flatMap((s) => (s.embedding || []).filter((v) => v !== null));
    const top = Math.max(1e-9, ...all.map((v) => Math.abs(v)));
    const cw = (w - left) / bands;
    series.forEach((s, r) => {
      svg("text", { x: 0, y: r * rowH + 10 }, box).textContent = String(s.year);
      const row = svg("g", { class: "series-row", "data-year": s.year }, box);
      if (!s.embedding) {
        svg("rect", { x: left, y: r * rowH, width: w - left, height: rowH - 2, fill: "#eef1f4" }, row);
        svg("text", { x: left + 4, y: r * rowH + 10 }, row).textContent = "no tile";
        return;
      }
      s.embedding.forEach((v, i) => {
        svg("rect", { class: "cell", "data-band": i, "data-value": v === null ? "null" : String(v),
          x: (left + i * cw).toFixed(2), y: r * rowH, width: (cw + 0.2).toFixed(2),
          height: rowH - 2, fill: colourOf(v, top) }, row);
      });
    });
    svg("text", { x: left, y: h - 2 }, box).textContent =
      "bands 0–" + (bands - 1) + "   blue > 0 > red, ±" + top.toPrecision(3);
    return box;
  }

  async function showPixel(lngLat) {
    const lon = Number(lngLat.lng.toFixed(6)), lat = Number(lngLat.lat.toFixed(6));
    map.getSource("click").setData({ type: "Feature", properties: {},
      geometry: { type: "Point", coordinates: [lon, lat] } });
    const section = el("pixel");
    section.hidden = false;
    section.dataset.lon = String(lon);
    section.dataset.lat = String(lat);
    delete section.dataset.ready;
    el("pixel-where").textContent = "reading " + lon + ", " + lat + "…";
    el("pixel-plot").replaceChildren();
    el("pixel-series").replaceChildren();
    const q = "lon=" + lon + "&lat=" + lat;
    try {
      const [one, series] = await Promise.all([
        getJSON("/api/point?" + q + "&year=" + state.year), getJSON("/api/point?" + q + "&years=all")]);
      if (section.dataset.lon !== String(lon) || section.dataset.lat !== String(lat)) { return; }
      const where = el("pixel-where");
      where.replaceChildren();
      const code = document.createElement("code");
      code.id = "pixel-id";
      code.dataset.tile = one.tile;
      code.dataset.row = String(one.row);
      code.dataset.col = String(one.col);
      code.dataset.year = String(one.year);
      code.textContent = one.tile + "  row " + one.row + "  col " + one.col;
      where.append(code, document.createElement("br"),
        lon.toFixed(5) + ", " + lat.toFixed(5) + " · UTM " + one.zone + " · " + one.year);
      if (one.embedding.every((v) => v === null)) {
        where.append(document.createElement("br"), "no data at this pixel (invalid scale)");
      }
      el("pixel-plot").appendChild(plotEmbedding(one.embedding));
      el("pixel-series").appendChild(plotSeries(series.series));
      section.dataset.ready = "1";
    } catch (e) {
      el("pixel-where").textContent = e.message;
    }
  }

  // ---- a box ------------------------------------------------------------------------------

  function boxFeature(b) {
    return { type: "Feature", properties: {}, geometry: { type: "Polygon",
      coordinates: [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]] } };
  }

  function clearPreview() {
    if (map.getLayer("preview")) { map.removeLayer("preview"); }
    if (map.getSource("preview")) { map.removeSource("preview"); }
    if (state.previewUrl) { URL.revokeObjectURL(state.previewUrl); state.previewUrl = null; }
  }

  async function showBox(b) {
    state.box = b;
    const section = el("box");
    section.hidden = false;
    delete section.dataset.ready;
    const bbox = b.map((v) => v.toFixed(5)).join(",");
    section.dataset.bbox = bbox;
    const px = pixels(b);
    el("box-where").textContent = "W,S,E,N " + bbox + " · about " + Math.round(px).toLocaleString() +
      " pixels · " + state.year;
    const links = el("box-downloads");
    links.replaceChildren();
    if (px <= state.info.limits.region_pixels) {
      for (const [fmt, label] of [["tif", "GeoTIFF"], ["zarr", "Zarr (zip)"]]) {
        const a = document.createElement("a");
        a.href = "/api/region?bbox=" + bbox + "&year=" + state.year + "&format=" + fmt;
        a.className = "download";
        a.dataset.format = fmt;
        a.setAttribute("download", "");
        a.textContent = "Download " + label;
        links.appendChild(a);
      }
    } else {
      links.innerHTML = "";
      links.append("Too large to download here (limit " +
        state.info.limits.region_pixels.toLocaleString() + " pixels): use `tessera-vz region`.");
    }
    clearPreview();
    const status = el("box-preview");
    if (px > state.info.limits.preview_pixels) {
      status.textContent = "Too large for a preview (limit " +
        state.info.limits.preview_pixels.toLocaleString() + " pixels): draw a smaller box.";
      section.dataset.ready = "too-large";
      return;
    }
    status.textContent = "computing the preview…";
    try {
      const r = await fetch("/api/preview.png?bbox=" + bbox + "&year=" + state.year);
      if (!r.ok) {
        let msg = r.status + " " + r.statusText;
        try { msg = (await r.json()).error || msg; } catch (e) { /* keep the status */ }
        throw new Error(msg);
      }
      if (state.box !== b) { return; }
      const corners = JSON.parse(r.headers.get("X-Tessera-Corners"));
      const shape = r.headers.get("X-Tessera-Shape");
      state.previewUrl = URL.createObjectURL(await r.blob());
      map.addSource("preview", { type: "image", url: state.previewUrl, coordinates: corners });
      map.addLayer({ id: "preview", type: "raster", source: "preview",
        paint: { "raster-opacity": 1, "raster-resampling": "nearest", "raster-fade-duration": 0 } },
      "box-line");
      status.textContent = "Preview: 3 principal components as RGB (" + shape.replace(",", " × ") +
        " pixels, " + r.headers.get("X-Tessera-Crs") + ")";
      map.once("idle", () => { if (state.box === b) { section.dataset.ready = "1"; } });
    } catch (e) {
      status.textContent = e.message;
      status.className = "warn";
      section.dataset.ready = "error";
    }
  }

  function setDrawing(on) {
    state.drawing = on;
    el("draw").classList.toggle("active", on);
    map.getCanvas().style.cursor = on ? "crosshair" : "";
    if (on) { map.dragPan.disable(); } else { map.dragPan.enable(); }
  }

  function boxFrom(a, b) {
    return [Math.min(a.lng, b.lng), Math.min(a.lat, b.lat), Math.max(a.lng, b.lng), Math.max(a.lat, b.lat)];
  }

  map.on("mousedown", (e) => {
    if (!(state.drawing || e.originalEvent.shiftKey)) { return; }
    e.preventDefault();
    map.dragPan.disable();
    state.start = e.lngLat;
  });
  map.on("mousemove", (e) => {
    if (!state.start) { return; }
    map.getSource("box").setData(boxFeature(boxFrom(state.start, e.lngLat)));
  });
  map.on("mouseup", (e) => {
    if (!state.start) { return; }
    const b = boxFrom(state.start, e.lngLat);
    state.start = null;
    state.justDrew = true; // the click this mouseup may fire is not a pixel pick
    setTimeout(() => { state.justDrew = false; }, 0);
    setDrawing(false);
    if (b[2] - b[0] < 1e-6 || b[3] - b[1] < 1e-6) { return; }
    map.getSource("box").setData(boxFeature(b));
    showBox(b);
  });

  map.on("click", (e) => {
    if (state.justDrew) { state.justDrew = false; return; }
    if (state.drawing || state.labelling) { return; } // labelling: labels.js takes the click
    const hit = map.queryRenderedFeatures(e.point, { layers: ["tiles-fill"] });
    // Below VECTOR_ZOOM a large year has no cells to hit: the server says if a tile is there.
    if (!hit.length && !(large() && map.getZoom() < VECTOR_ZOOM)) {
      el("pixel").hidden = false;
      el("pixel-where").textContent = "No indexed tile of " + state.year + " here.";
      el("pixel-plot").replaceChildren();
      el("pixel-series").replaceChildren();
      return;
    }
    showPixel(e.lngLat);
  });

  // ---- start ------------------------------------------------------------------------------

  el("draw").addEventListener("click", () => setDrawing(!state.drawing));
  el("year").addEventListener("change", () => {
    state.year = Number(el("year").value);
    delete document.body.dataset.tiles;
    setRaster();
    loadCoverage();
    if (state.box) { showBox(state.box); }
  });
  map.on("moveend", () => {
    if (state.info && large()) {
      loadCoverage();
    }
  });

  map.on("load", async () => {
    try {
      state.info = await getJSON("/api/info");
    } catch (e) {
      setStatus(e.message, true);
      return;
    }
    const years = state.info.years;
    const select = el("year");
    for (const y of years) {
      const o = document.createElement("option");
      o.value = String(y);
      o.textContent = String(y);
      select.appendChild(o);
    }
    state.year = years[years.length - 1];
    select.value = String(state.year);
    addLayers();
    tryBasemap(state.info.basemap);
    if (state.info.bounds) {
      const b = state.info.bounds;
      map.fitBounds([[b[0], b[1]], [b[2], b[3]]], { padding: 30, duration: 0 });
    }
    await loadCoverage();
  });

  window.tesseraViewer = { map, state, showBox, showPixel };
})();
