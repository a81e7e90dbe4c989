// The lineage map's drawing: reads the page's JSON (#lineage-data), draws one family (or all, while the
// store is small) as SVG, and filters by family, confidence and disagreement. Part of lineage-scanner,
// inlined into each page: nothing is fetched. Text from the data is set with textContent, never as HTML.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const DX = 190, DY = 96, PAD = 60, ROW_WIDTH = 2400;
  const data = JSON.parse(document.getElementById("lineage-data").textContent);
  const family = document.getElementById("family");
  const confidence = document.getElementById("confidence");
  const shown = document.getElementById("confidence-value");
  const onlyDisagreements = document.getElementById("disagreements");
  const canvas = document.getElementById("canvas");
  const counts = document.getElementById("counts");
  const byModel = new Map(data.nodes.map(function (n) { return [n.model, n]; }));

  function option(value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    family.appendChild(o);
  }
  if (data.nodes.length <= data.all_limit) option("all", "all families");
  data.families.forEach(function (f, i) {
    option(String(i), f.label + " (" + f.size + (f.size === 1 ? " model)" : " models)"));
  });

  function element(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    parent.appendChild(e);
    return e;
  }

  // Where each family's origin goes: side by side, wrapping into rows ROW_WIDTH wide.
  function origins(families) {
    const out = new Map();
    let x = 0, y = 0, rowDepth = 0;
    families.forEach(function (k) {
      const f = data.families[k];
      const width = Math.max(f.width, 1) * DX;
      if (x > 0 && x + width > ROW_WIDTH) { x = 0; y += rowDepth + DY; rowDepth = 0; }
      out.set(k, [x + width / 2, y]);
      x += width + DX / 2;
      rowDepth = Math.max(rowDepth, f.depth * DY);
    });
    return out;
  }

  function render() {
    const which = family.value;
    const threshold = Number(confidence.value);
    shown.textContent = threshold.toFixed(3);
    const families = which === "all" ? data.families.map(function (_, i) { return i; }) : [Number(which)];
    const inView = new Set(families);
    let edges = data.edges.filter(function (e) {
      return inView.has(byModel.get(e.a).family) &&
        (e.confidence === null || e["class"] === "unconfirmed" || e.confidence >= threshold);
    });
    let nodes = data.nodes.filter(function (n) { return inView.has(n.family); });
    if (onlyDisagreements.checked) {
      edges = edges.filter(function (e) { return e["class"] !== "agree"; });
      const touched = new Set();
      edges.forEach(function (e) { touched.add(e.a); touched.add(e.b); });
      nodes = nodes.filter(function (n) { return touched.has(n.model); });
    }
    const at = origins(families);
    function place(n) {
      const o = at.get(n.family);
      return [o[0] + n.x * DX, o[1] + n.y * DY];
    }
    canvas.textContent = "";
    let minX = Infinity, maxX = -Infinity, maxY = 0;
    nodes.forEach(function (n) {
      const p = place(n);
      minX = Math.min(minX, p[0]); maxX = Math.max(maxX, p[0]); maxY = Math.max(maxY, p[1]);
    });
    if (!nodes.length) { minX = 0; maxX = 0; }
    const width = maxX - minX + 2 * PAD + DX, height = maxY + 2 * PAD;
    const svg = element("svg", {
      viewBox: (minX - PAD - DX / 2) + " " + (-PAD) + " " + width + " " + height,
      width: Math.max(width, 400), height: Math.max(height, 200), role: "img",
      "aria-label": "lineage map", "data-nodes": nodes.length, "data-edges": edges.length,
    }, canvas);
    const edgeLayer = element("g", {}, svg), nodeLayer = element("g", {}, svg);
    edges.forEach(function (e) {
      const a = place(byModel.get(e.a)), b = place(byModel.get(e.b));
      const line = element("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], "class": "edge " + e["class"] }, edgeLayer);
      const title = element("title", {}, line);
      const conf = e.confidence === null ? "" : ", confidence " + e.confidence.toFixed(4);
      const what = { agree: "detected and declared", undeclared: "detected, not declared",
        unconfirmed: "declared, not detected" }[e["class"]];
      title.textContent = e.a + " - " + e.b + ": " + what + (e.kind ? " (" + e.kind + ")" : "") + conf;
      if (e.kind) {
        const label = element("text", { x: (a[0] + b[0]) / 2 + 4, y: (a[1] + b[1]) / 2, "class": "edge-label" }, edgeLayer);
        label.textContent = e.kind;
      }
    });
    nodes.forEach(function (n) {
      const p = place(n);
      const g = element("g", { "class": "node" + (n.root ? " root" : ""), transform: "translate(" + p[0] + "," + p[1] + ")" }, nodeLayer);
      g.dataset.model = n.model;
      element("circle", { r: 9 }, g);
      const name = element("text", { x: 0, y: -14, "text-anchor": "middle" }, g);
      name.textContent = n.model.length > 32 ? n.model.slice(0, 31) + "\u2026" : n.model;
      const arch = element("text", { x: 0, y: 24, "text-anchor": "middle", "class": "arch" }, g);
      arch.textContent = n.architecture || "";
      const title = element("title", {}, g);
      title.textContent = n.model + "@" + (n.revision || "") + "\narchitecture: " + (n.architecture || "unknown") +
        "\ndeclared base: " + (n.declared_base.length ? n.declared_base.join(", ") : "none");
    });
    counts.textContent = nodes.length + " models, " + edges.length + " edges shown";
  }

  [family, confidence, onlyDisagreements].forEach(function (c) { c.addEventListener("input", render); });
  family.addEventListener("change", render);
  render();
})();
