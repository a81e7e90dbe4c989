// The lineage map's drawing: reads the page's JSON (#lineage-data) and draws each family as an indented
// tree, one model per row, so that no label can fall on another. Large sets of children are grouped by
// kind and open on click, a page at a time. The view fits the window; wheel or buttons zoom, dragging
// pans. Every filter lays the rows out again. Part of lineage-scanner, inlined into each page: nothing
// is fetched. Text from the data is set with textContent, never as HTML.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const ROW = 24, INDENT = 24, DOT = 5, PAD = 20, COLUMN_GAP = 56;
  const GROUP_AT = 12;      // a model with more children than this shows them in groups by kind
  const PAGE = 500;         // members an opened group shows per click
  const READABLE = 0.6;     // below this zoom the first view shows the top of the map instead of all of it
  const NAME_FONT = "13px system-ui, -apple-system, 'Segoe UI', sans-serif";
  const TAG_FONT = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";

  const data = JSON.parse(document.getElementById("lineage-data").textContent);
  const nodes = data.nodes;
  const family = document.getElementById("family");
  const onlyDisagreements = document.getElementById("disagreements");
  const find = document.getElementById("find");
  const canvas = document.getElementById("canvas");
  const counts = document.getElementById("counts");

  const children = nodes.map(function () { return []; });
  const familyOf = new Array(nodes.length).fill(-1);
  nodes.forEach(function (n, i) { if (n.parent >= 0) children[n.parent].push(i); });
  children.forEach(function (kids) {
    kids.sort(function (a, b) {
      return (nodes[b].closeness || 0) - (nodes[a].closeness || 0) || compare(nodes[a].label, nodes[b].label);
    });
  });
  data.families.forEach(function (f, k) {
    const stack = [f.root];
    while (stack.length) { const i = stack.pop(); familyOf[i] = k; children[i].forEach(function (c) { stack.push(c); }); }
  });
  const byLabel = new Map(nodes.map(function (n, i) { return [n.label, i]; }));
  const opened = new Map();   // group key -> members shown
  let found = -1;

  function compare(a, b) { return a < b ? -1 : a > b ? 1 : 0; }
  function flagged(n) { return n["class"] === "undeclared" || n.claims.length > 0; }

  function option(value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    family.appendChild(o);
  }
  if (nodes.length <= data.all_limit) option("all", "all families");
  data.families.forEach(function (f, i) {
    option(String(i), f.label + " (" + f.size.toLocaleString("en") + (f.size === 1 ? " model)" : " models)"));
  });

  const measure = document.createElement("canvas").getContext("2d");
  function width(text, font) { measure.font = font; return measure.measureText(text).width; }

  // What a row says beside the name: the kind, and what gave the direction.
  function tag(n) {
    if (n.parent < 0) return n.architecture;
    const how = n.direction === "unknown" ? "direction unknown" : "direction: " + n.direction;
    return n.kind + " \u00b7 " + how;
  }

  // The rows of one family, depth first; `keep` (a set, or null for all) limits the models shown.
  function rows(root, keep) {
    const out = [];
    function visit(i, depth, via) {
      out.push({ type: "node", i: i, depth: depth, via: via });
      const kids = children[i].filter(function (c) { return keep === null || keep.has(c); });
      if (kids.length <= GROUP_AT) { kids.forEach(function (c) { visit(c, depth + 1, null); }); return; }
      const groups = new Map();
      kids.forEach(function (c) {
        const k = nodes[c].kind || "derived";
        if (!groups.has(k)) groups.set(k, []);
        groups.get(k).push(c);
      });
      Array.from(groups.entries()).sort(function (a, b) { return b[1].length - a[1].length || compare(a[0], b[0]); })
        .forEach(function (entry) {
          const key = i + "\u0000" + entry[0], members = entry[1];
          const shown = opened.get(key) || 0;
          out.push({ type: "group", key: key, parent: i, kind: entry[0], members: members, shown: shown, depth: depth + 1 });
          members.slice(0, shown).forEach(function (c) { visit(c, depth + 2, key); });
          if (shown > 0 && shown < members.length) {
            out.push({ type: "more", key: key, parent: i, members: members, shown: shown, depth: depth + 2 });
          }
        });
    }
    visit(root, 0, null);
    return out;
  }

  // Which models "disagreements only" keeps: those whose cards and weights disagree, and their ancestors.
  function disagreementSet() {
    const keep = new Set();
    nodes.forEach(function (n, i) {
      if (!flagged(n)) return;
      for (let j = i; j >= 0 && !keep.has(j); j = nodes[j].parent) keep.add(j);
    });
    return keep;
  }

  function rowText(r) {
    if (r.type === "node") return [nodes[r.i].label, tag(nodes[r.i])];
    if (r.type === "group") {
      const what = r.members.length.toLocaleString("en") + " \u00d7 " + r.kind;
      return [(r.shown ? "\u25be " : "\u25b8 ") + what, r.shown ? "click to close" : "click to open"];
    }
    return ["\u25b8 show " + Math.min(PAGE, r.members.length - r.shown).toLocaleString("en") + " more of " +
            r.members.length.toLocaleString("en"), ""];
  }

  // A family's block: its rows with x offsets, and its size.
  function block(root, keep) {
    const list = rows(root, keep);
    let w = 0;
    list.forEach(function (r) {
      const text = rowText(r);
      r.nameWidth = width(text[0], NAME_FONT);
      const claims = r.type === "node" ? nodes[r.i].claims : [];
      const extra = claims.length ? width("card claims " + claims.join(", ") + ": not supported", TAG_FONT) + 10 : 0;
      r.width = r.depth * INDENT + 2 * DOT + 8 + r.nameWidth + 10 + width(text[1], TAG_FONT) + extra;
      w = Math.max(w, r.width);
    });
    return { rows: list, width: w, height: list.length * ROW };
  }

  // Blocks into columns, the column count chosen so that the whole fits the window at the largest scale.
  function arrange(blocks) {
    const W = canvas.clientWidth || 1000, H = canvas.clientHeight || 600;
    let best = null;
    for (let c = 1; c <= Math.min(blocks.length, 8); c++) {
      const heights = new Array(c).fill(0), widths = new Array(c).fill(0), at = [];
      blocks.forEach(function (b) {
        const k = heights.indexOf(Math.min.apply(null, heights));
        at.push([k, heights[k]]);
        heights[k] += b.height + ROW;
        widths[k] = Math.max(widths[k], b.width);
      });
      const totalW = widths.reduce(function (s, x) { return s + x; }, 0) + COLUMN_GAP * (c - 1) + 2 * PAD;
      const totalH = Math.max.apply(null, heights) + 2 * PAD;
      const scale = Math.min(W / totalW, H / totalH);
      if (best === null || scale > best.scale) best = { scale: scale, at: at, widths: widths, width: totalW, height: totalH };
    }
    const left = [PAD];
    best.widths.forEach(function (w, k) { left.push(left[k] + w + COLUMN_GAP); });
    blocks.forEach(function (b, k) { b.x = left[best.at[k][0]]; b.y = PAD + best.at[k][1]; });
    return { width: best.width, height: best.height };
  }

  function element(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    parent.appendChild(e);
    return e;
  }

  const svg = element("svg", { role: "img", "aria-label": "lineage map" }, canvas);
  const viewport = element("g", {}, svg);
  let view = { k: 1, x: 0, y: 0 }, content = { width: 0, height: 0 };
  function apply() { viewport.setAttribute("transform", "translate(" + view.x + "," + view.y + ") scale(" + view.k + ")"); }
  function fit(readable) {
    const W = canvas.clientWidth || 1000, H = canvas.clientHeight || 600;
    const k = Math.min(W / content.width, H / content.height, 1.5);
    if (readable && k < READABLE) { view = { k: READABLE, x: 0, y: 0 }; }
    else { view = { k: k, x: (W - content.width * k) / 2, y: Math.max(0, (H - content.height * k) / 2) }; }
    apply();
  }
  function zoom(factor, cx, cy) {
    const k = Math.max(0.02, Math.min(8, view.k * factor));
    view = { k: k, x: cx - (cx - view.x) * k / view.k, y: cy - (cy - view.y) * k / view.k };
    apply();
  }

  function render(keepView) {
    const started = performance.now();
    const which = family.value;
    const families = which === "all" ? data.families.map(function (_, i) { return i; }) : [Number(which)];
    const keep = onlyDisagreements.checked ? disagreementSet() : null;
    const blocks = families.filter(function (k) { return keep === null || keep.has(data.families[k].root); })
      .map(function (k) { return block(data.families[k].root, keep); });
    content = arrange(blocks);
    viewport.textContent = "";
    const links = element("g", {}, viewport), claimLayer = element("g", {}, viewport), layer = element("g", {}, viewport);
    const at = new Map();
    let shownNodes = 0, shownLinks = 0;
    blocks.forEach(function (b) {
      const parentAt = new Map(), groupAt = new Map();
      b.rows.forEach(function (r, k) {
        const x = b.x + r.depth * INDENT + DOT, y = b.y + k * ROW + ROW / 2;
        let from = null;
        if (r.type === "node" && r.via) from = groupAt.get(r.via);
        else if (r.type === "node") from = r.depth > 0 ? parentAt.get(nodes[r.i].parent) : null;
        else from = r.type === "more" ? groupAt.get(r.key) : parentAt.get(r.parent);
        if (r.type === "node") {
          parentAt.set(r.i, [x, y]);
          at.set(r.i, [x, y]);
        } else if (r.type === "group") {
          groupAt.set(r.key, [x, y]);
        }
        if (from) {
          const n = r.type === "node" ? nodes[r.i] : null;
          const css = n ? n["class"] : "group";
          const link = element("path", { d: "M" + from[0] + " " + (from[1] + DOT) + "V" + y + "H" + (x - DOT),
            "class": "link " + css }, links);
          if (n) {
            shownLinks++;
            element("title", {}, link).textContent = nodes[n.parent].label + " \u2192 " + n.label + ": " + n.kind +
              (css === "undeclared" ? " (no card declares it)" : " (declared by the card)");
          }
        }
        const text = rowText(r);
        const g = element("g", { transform: "translate(" + x + "," + y + ")" }, layer);
        if (r.type === "node") {
          const n = nodes[r.i];
          shownNodes++;
          g.setAttribute("class", "node" + (n.parent < 0 ? " root" : "") + (flagged(n) ? " flagged" : "") +
            (keep !== null && !flagged(n) ? " context" : "") + (r.i === found ? " found" : ""));
          g.dataset.model = n.label;
          element("circle", { r: DOT }, g);
        } else {
          g.setAttribute("class", "group");
          g.dataset.group = r.key;
          element("rect", { x: -DOT, y: -DOT, width: 2 * DOT, height: 2 * DOT }, g);
          g.addEventListener("click", function () {
            opened.set(r.key, r.type === "more" ? r.shown + PAGE : (r.shown ? 0 : Math.min(PAGE, r.members.length)));
            render(true);
          });
        }
        const name = element("text", { x: DOT + 8, y: 4, "class": "name" }, g);
        name.textContent = text[0];
        if (text[1]) {
          element("text", { x: DOT + 8 + r.nameWidth + 10, y: 4, "class": "tag" }, g).textContent = text[1];
        }
        if (r.type === "node") {
          const n = nodes[r.i];
          if (n.claims.length) {
            element("text", { x: DOT + 8 + r.nameWidth + 10 + width(text[1], TAG_FONT) + 10, y: 4, "class": "claim" }, g)
              .textContent = "card claims " + n.claims.join(", ") + ": not supported";
          }
          element("title", {}, g).textContent = details(n);
        }
      });
    });
    // a card's claim the weights do not back: a dotted line to the claimed base, where both are drawn
    nodes.forEach(function (n, i) {
      n.claims.forEach(function (c) {
        const a = at.get(i), b = at.get(byLabel.get(c));
        if (a && b) {
          element("path", { d: "M" + (a[0] - DOT) + " " + a[1] + "C" + (a[0] - 60) + " " + a[1] + " " + (b[0] - 60) + " " +
            b[1] + " " + (b[0] - DOT) + " " + b[1], "class": "link claim" }, claimLayer);
        }
      });
    });
    svg.setAttribute("data-nodes", shownNodes);
    svg.setAttribute("data-edges", shownLinks);
    if (!keepView) fit(true);
    svg.setAttribute("data-render-ms", (performance.now() - started).toFixed(1));
    const total = families.reduce(function (s, k) { return s + data.families[k].size; }, 0);
    counts.textContent = shownNodes.toLocaleString("en") + " of " + total.toLocaleString("en") + " models shown" +
      (shownNodes < total && keep === null ? " (\u25b8 opens a group)" : "");
  }

  function details(n) {
    const lines = [n.label + "@" + n.revision, "architecture: " + n.architecture,
      "declared base: " + (n.declared.length ? n.declared.join(", ") : "none")];
    if (n.parent >= 0) {
      lines.push("parent: " + nodes[n.parent].label + " (" + n.kind + ")",
        "direction: " + (n.direction === "unknown" ? "unknown: " : n.direction + ": ") + n.note,
        "closeness: " + (n.closeness === null ? "n/a" : n.closeness.toFixed(4)) + " (" + n.evidence + "), p = " + n.p);
      if (n.runner_up) lines.push("next-nearest possible parent: " + n.runner_up);
    }
    n.claims.forEach(function (c) { lines.push("card claims " + c + ": the weights do not support it"); });
    return lines.join("\n");
  }

  // Find a model by name: open the groups that hide it, show its family, and centre it.
  function search() {
    const text = find.value.trim();
    found = -1;
    if (text) {
      found = nodes.findIndex(function (n) { return n.label === text; });
      if (found < 0) found = nodes.findIndex(function (n) { return n.label.indexOf(text) >= 0; });
    }
    if (found < 0) { render(true); return; }
    if (family.value !== "all") family.value = String(familyOf[found]);
    for (let c = found, p = nodes[found].parent; p >= 0; c = p, p = nodes[p].parent) {
      if (children[p].length > GROUP_AT) {
        const key = p + "\u0000" + (nodes[c].kind || "derived");
        const position = children[p].filter(function (x) { return (nodes[x].kind || "derived") === (nodes[c].kind || "derived"); }).indexOf(c);
        opened.set(key, Math.max(opened.get(key) || 0, Math.ceil((position + 1) / PAGE) * PAGE));
      }
    }
    render(true);
    const target = Array.from(viewport.querySelectorAll(".node")).find(function (g) { return g.dataset.model === nodes[found].label; });
    if (target) {
      const box = target.getBBox(), m = target.transform.baseVal.consolidate().matrix;
      view.k = Math.max(view.k, 1);
      view.x = canvas.clientWidth / 2 - (m.e + box.x) * view.k;
      view.y = canvas.clientHeight / 2 - m.f * view.k;
      apply();
    }
  }

  // Zoom and pan.
  let drag = null;
  svg.addEventListener("wheel", function (e) {
    e.preventDefault();
    const box = svg.getBoundingClientRect();
    zoom(Math.exp(-e.deltaY * 0.0015), e.clientX - box.left, e.clientY - box.top);
  }, { passive: false });
  svg.addEventListener("pointerdown", function (e) {
    if (e.target.closest && e.target.closest(".group")) return;
    drag = { x: e.clientX - view.x, y: e.clientY - view.y };
    svg.setPointerCapture(e.pointerId);
  });
  svg.addEventListener("pointermove", function (e) {
    if (drag) { view.x = e.clientX - drag.x; view.y = e.clientY - drag.y; apply(); }
  });
  svg.addEventListener("pointerup", function () { drag = null; });
  document.getElementById("zoom-in").addEventListener("click", function () { zoom(1.25, canvas.clientWidth / 2, canvas.clientHeight / 2); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoom(0.8, canvas.clientWidth / 2, canvas.clientHeight / 2); });
  document.getElementById("fit").addEventListener("click", function () { fit(false); });

  family.addEventListener("change", function () { render(false); });
  onlyDisagreements.addEventListener("change", function () { render(false); });
  find.addEventListener("change", search);
  window.addEventListener("resize", function () { render(false); });
  render(false);
})();
