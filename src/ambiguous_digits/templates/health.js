// The health map: every image as a dot on one canvas (no DOM node per image); hover shows its thumbnail,
// click its details. The arrays come base64 in #health-map-data (healthview.map_data).
(function () {
  const node = document.getElementById("health-map-data");
  if (!node) return;
  const D = JSON.parse(node.textContent);
  const canvas = document.getElementById("health-map"), ctx = canvas.getContext("2d");
  const tip = document.getElementById("health-map-tip"), detail = document.getElementById("health-map-detail");
  const MARK = D.bits;
  const RING = [[MARK.suspect, "#111827"], [MARK.duplicate, "#7c3aed"], [MARK.outlier, "#0d9488"]];
  const PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
                   "#ccb974", "#64b5cd"];
  const PAD = 8, CELL = 8, HIT = 6;
  function bytes(b64) { return Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); }); }
  const raw = bytes(D.xy), xy = new Uint16Array(raw.buffer, 0, 2 * D.n);
  const labels = bytes(D.labels), marks = bytes(D.marks);
  const px = new Float32Array(D.n), py = new Float32Array(D.n);
  const w = canvas.width - 2 * PAD, h = canvas.height - 2 * PAD;
  for (let i = 0; i < D.n; i++) { px[i] = PAD + xy[2 * i] / 65535 * w; py[i] = PAD + (1 - xy[2 * i + 1] / 65535) * h; }
  const cols = Math.ceil(canvas.width / CELL), grid = new Map();  // cell -> the points in it, for hover
  for (let i = 0; i < D.n; i++) {
    const key = Math.floor(py[i] / CELL) * cols + Math.floor(px[i] / CELL);
    if (!grid.has(key)) grid.set(key, []);
    grid.get(key).push(i);
  }
  let thumbs = null;  // Uint8Array, four 2-bit pixels a byte (healthview.thumbnails), once unzipped
  const state = {ready: false, hovered: -1, selected: -1, drawMs: 0};
  window.healthMap = {state: state, point: function (i) { return [px[i], py[i]]; }, n: D.n,
                      find: function (pred) { for (let i = 0; i < D.n; i++) if (pred(labels[i], marks[i], i)) return i; return -1; },
                      marks: function (i) { return marks[i]; }};
  function colour(i) { return PALETTE[labels[i] % PALETTE.length]; }
  function draw() {
    const t0 = performance.now();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (let c = 0; c < D.classes.length; c++) {  // one fill per class: 70,000 rects in 10 batches
      ctx.fillStyle = PALETTE[c % PALETTE.length];
      ctx.beginPath();
      for (let i = 0; i < D.n; i++) if (labels[i] === c) ctx.rect(px[i] - 1, py[i] - 1, 2, 2);
      ctx.fill();
    }
    RING.forEach(function (r) {
      ctx.strokeStyle = r[1]; ctx.lineWidth = 1.2; ctx.beginPath();
      for (let i = 0; i < D.n; i++) if (marks[i] & r[0]) { ctx.moveTo(px[i] + 3.5, py[i]); ctx.arc(px[i], py[i], 3.5, 0, 2 * Math.PI); }
      ctx.stroke();
    });
    if (state.selected >= 0) {
      const i = state.selected;
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(px[i], py[i], 7, 0, 2 * Math.PI); ctx.stroke();
    }
    state.drawMs = performance.now() - t0;
  }
  function nearest(x, y) {
    let best = -1, bd = HIT * HIT;
    const cx = Math.floor(x / CELL), cy = Math.floor(y / CELL);
    for (let gy = cy - 1; gy <= cy + 1; gy++) for (let gx = cx - 1; gx <= cx + 1; gx++) {
      (grid.get(gy * cols + gx) || []).forEach(function (i) {
        const d = (px[i] - x) * (px[i] - x) + (py[i] - y) * (py[i] - y);
        if (d < bd) { bd = d; best = i; }
      });
    }
    return best;
  }
  function where(i) { return i < D.n_train ? ["train", i] : ["test", i - D.n_train]; }
  function paint(target, i) {  // the thumbnail of point i, scaled to the target canvas
    if (!thumbs) return;
    const s = D.side, small = document.createElement("canvas");
    small.width = small.height = s;
    const img = small.getContext("2d").createImageData(s, s);
    for (let p = 0; p < s * s; p++) {
      const f = i * s * s + p, v = Math.round(((thumbs[f >> 2] >> (6 - 2 * (f & 3))) & 3) * 255 / (D.levels - 1));
      img.data[4 * p] = img.data[4 * p + 1] = img.data[4 * p + 2] = v; img.data[4 * p + 3] = 255;
    }
    small.getContext("2d").putImageData(img, 0, 0);
    const c = target.getContext("2d");
    c.imageSmoothingEnabled = false;
    c.drawImage(small, 0, 0, target.width, target.height);
  }
  function words(i) {
    const m = marks[i], found = [];
    if (m & MARK.suspect) found.push("suspected label error");
    if (m & MARK.duplicate) found.push("near-duplicate");
    if (m & MARK.outlier) found.push("outlier");
    const s = where(i);
    return s[0] + " #" + s[1] + ", label " + D.classes[labels[i]] + (found.length ? " (" + found.join(", ") + ")" : "");
  }
  canvas.addEventListener("mousemove", function (e) {
    const r = canvas.getBoundingClientRect();
    const i = nearest((e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height);
    state.hovered = i;
    if (i < 0) { tip.hidden = true; return; }
    tip.hidden = false;
    tip.querySelector("span").textContent = words(i);
    paint(tip.querySelector("canvas"), i);
    tip.style.left = (e.clientX - canvas.parentElement.getBoundingClientRect().left + 14) + "px";
    tip.style.top = (e.clientY - canvas.parentElement.getBoundingClientRect().top + 14) + "px";
  });
  canvas.addEventListener("mouseleave", function () { tip.hidden = true; state.hovered = -1; });
  canvas.addEventListener("click", function (e) {
    const r = canvas.getBoundingClientRect();
    const i = nearest((e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height);
    if (i < 0) return;
    state.selected = i;
    const big = document.createElement("canvas"); big.width = big.height = 112;
    const head = document.createElement("p"); head.id = "health-map-selected"; head.textContent = words(i);
    head.dataset.split = where(i)[0]; head.dataset.index = where(i)[1];
    const more = document.createElement("p"); more.className = "small";
    more.textContent = "Its scores: " + (where(i)[0] === "train" ? "train_dynamics.csv" : "scores.csv") + ", row " + where(i)[1] + ".";
    detail.replaceChildren(big, head, more);
    const A = window.ambiguousDigits, s = where(i);
    if (s[0] === "test" && A && A.DIGITS.has(s[1])) {  // a digit of the galleries: its full detail view is there
      const b = document.createElement("button"); b.id = "health-map-open"; b.textContent = "Open its detail view";
      b.addEventListener("click", function () { A.openDetail(A.DIGITS.get(s[1])); });
      detail.appendChild(b);
    }
    paint(big, i);
    draw();
  });
  const legend = document.getElementById("health-map-legend");
  legend.replaceChildren(...D.classes.map(function (c, k) {
    const s = document.createElement("span"), dot = document.createElement("i");
    dot.style.background = PALETTE[k % PALETTE.length]; s.append(dot, c); return s;
  }));
  draw();
  if (typeof DecompressionStream === "undefined") {  // an older browser: the map without the images
    state.ready = true; canvas.dataset.ready = "1";
    return;
  }
  new Response(new Blob([bytes(D.thumbs)]).stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer()
    .then(function (buf) { thumbs = new Uint8Array(buf); state.ready = true; canvas.dataset.ready = "1"; });
})();
