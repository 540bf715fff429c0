// The gallery, its controls and the detail view. Reads the one JSON blob the page carries; shares its
// helpers with review.js through window.ambiguousDigits (two scripts, one page, no modules offline).
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const DIGITS = new Map(DATA.digits.map(function (d) { return [d.i, d]; }));
  const $ = function (id) { return document.getElementById(id); };
  // MNIST's items are digits; any other data set's are images (the header names the data set).
  const NOUN = $("dataset") && $("dataset").textContent.trim() !== "mnist" ? "image" : "digit";
  const ui = { ranking: $("ranking"), truth: $("filter-true"), pred: $("filter-pred"), count: $("count"),
               gallery: $("gallery"), about: $("ranking-about"), status: $("gallery-status"), detail: $("detail") };
  const MEASURE_NAMES = {
    prob_pred: "p(predicted)", prob_label: "p(true label)", margin: "margin (top-1 − top-2)",
    entropy: "entropy (nats)", expected_entropy: "aleatoric (nats)", mutual_information: "epistemic (nats)",
    vote_disagreement: "vote disagreement", members_wrong: "members wrong", ambiguity: "ambiguity",
  };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(x) { return x === null ? "—" : (Number.isInteger(x) ? String(x) : x.toFixed(4)); }

  // Digits of the chosen ranking that pass both filters, most ambiguous first.
  function selection() {
    const t = ui.truth.value, p = ui.pred.value, n = Number(ui.count.value);
    const out = [];
    for (const i of DATA.rankings[ui.ranking.value].order) {
      const d = DIGITS.get(i);
      if ((t === "" || d.y === Number(t)) && (p === "" || d.p === Number(p))) out.push(d);
      if (out.length === n) break;
    }
    return out;
  }

  function bars(d) {
    const box = el("div", "bars");
    d.probs.forEach(function (v, c) {
      const bar = el("span", c === d.y ? "truth" : (c === d.p ? "wrongpred" : ""));
      bar.style.height = (100 * v).toFixed(1) + "%";
      bar.title = DATA.classes[c] + ": " + v.toFixed(3);
      box.appendChild(bar);
    });
    const ticks = el("div", "ticks");
    // Digits fit under their bars; longer class names show as their index (full name on hover).
    DATA.classes.forEach(function (name, c) {
      const tick = el("span", "", name.length <= 2 ? name : String(c));
      tick.title = name;
      ticks.appendChild(tick);
    });
    return [box, ticks];
  }

  function labelLine(d, ranking) {
    const line = el("div", "lab");
    line.append("true ", el("b", "truthtxt", DATA.classes[d.y]), " → ");
    line.appendChild(el("b", d.p === d.y ? "" : "wrongtxt", DATA.classes[d.p]));
    if (ranking === "label_issues" && d.issue) {
      line.append(" · ", el("span", "small", "suggest " + DATA.classes[d.issue.suggested]));
    }
    return line;
  }

  function card(d, ranking) {
    const item = el("button", "digit" + (d.p === d.y ? "" : " wrong"));
    item.type = "button";
    item.dataset.index = d.i;
    item.dataset.label = d.y;
    item.dataset.pred = d.p;
    item.dataset.rank = d.ranks[ranking];
    const img = el("img", "pix");
    img.src = d.img;
    img.alt = "test " + NOUN + " " + d.i;
    const cap = el("div", "cap");
    cap.append(el("span", "idx", "#" + d.i), el("span", "", "rank " + d.ranks[ranking]));
    item.append(img, cap, labelLine(d, ranking), ...bars(d));
    item.addEventListener("click", function () { openDetail(d); });
    return item;
  }

  function render() {
    const name = ui.ranking.value, r = DATA.rankings[name];
    const shown = selection();
    const t = ui.truth.value === "" ? 0 : Number(ui.truth.value) + 1;
    const p = ui.pred.value === "" ? 0 : Number(ui.pred.value) + 1;
    ui.about.textContent = "Ranked: " + r.about + ".";
    ui.status.textContent = "Showing " + shown.length + " of " + r.counts[t][p] + " ranked " + NOUN + "s that match.";
    ui.gallery.replaceChildren(...shown.map(function (d) { return card(d, name); }));
    if (!shown.length) ui.gallery.appendChild(el("p", "empty", "No ranked " + NOUN + " matches these filters."));
  }

  function probRows(d) {
    const rows = [];
    d.probs.forEach(function (v, c) {
      const track = el("div", "track");
      const fill = el("div", "fill" + (c === d.y ? " truth" : (c === d.p ? " wrongpred" : "")));
      fill.style.width = (100 * v).toFixed(1) + "%";
      track.appendChild(fill);
      rows.push(el("b", "", DATA.classes[c]), track, el("span", "val", v.toFixed(4)));
    });
    return rows;
  }

  function row(cells, cls) {
    const tr = el("tr", cls || "");
    cells.forEach(function (c, k) { tr.appendChild(el(k === 0 ? "th" : "td", "", c)); });
    return tr;
  }

  function measureRows(d) {
    const rows = DATA.measures.filter(function (m) { return m in d.m; })
      .map(function (m) { return row([MEASURE_NAMES[m] || m, fmt(d.m[m])]); });
    if (d.issue) {
      rows.push(row(["suggested label", DATA.classes[d.issue.suggested]]),
                row(["label quality", fmt(d.issue.quality)]),
                row(["flagged by cleanlab", d.issue.flagged ? "yes" : "no"]));
    }
    return rows;
  }

  function rankRows(d) {
    return Object.keys(DATA.rankings).map(function (name) {
      const rank = d.ranks[name];
      return row([DATA.rankings[name].title, rank === null ? "not ranked" : String(rank)]);
    });
  }

  function memberRows(d) {
    const rows = [row(["member", "vote", "p(vote)", "p(true)", "seed"])];
    d.votes.forEach(function (v, m) {
      rows.push(row(["#" + (m + 1), DATA.classes[v], d.vote_probs[m].toFixed(4), d.label_probs[m].toFixed(4),
                     String(DATA.seeds[m])],
                    "vote" + (v === d.y ? "" : " disagrees")));
    });
    return rows;
  }

  const ROLE_NAMES = { given: "given label", predicted: "predicted", suggested: "suggested" };

  // A digit's evidence: its reasons sentences, then one strip of nearest training images per class.
  function evidence(d) {
    const box = el("div", "evidence");
    if (d.reasons) box.appendChild(el("p", "reasons", d.reasons));
    if (d.issue && d.issue.reasons) box.appendChild(el("p", "reasons", "Audit: " + d.issue.reasons));
    (d.strips || []).forEach(function (s) {
      const strip = el("div", "strip");
      strip.dataset.class = s.c;
      strip.dataset.roles = s.roles.join(" ");
      const roles = s.roles.map(function (r) { return ROLE_NAMES[r] || r; }).join(" & ");
      strip.appendChild(el("div", "strip-label", roles + " " + DATA.classes[s.c] + ": " + s.train.length +
                           " nearest training " + NOUN + "s, mean distance " + s.mean.toFixed(3)));
      const row = el("div", "strip-images");
      s.train.forEach(function (t) {
        const img = el("img", "pix");
        img.src = DATA.train_images[t];
        img.alt = "training " + NOUN + " " + t;
        img.title = "train #" + t;
        row.appendChild(img);
      });
      strip.appendChild(row);
      box.appendChild(strip);
    });
    if (d.caption) {
      const given = d.strips[0].mean;
      const elsewhere = d.strips.slice(1).some(function (s) { return s.mean < given; });
      box.appendChild(el("p", "caption" + (elsewhere ? " elsewhere" : ""), d.caption));
    }
    if (!box.childNodes.length) box.appendChild(el("p", "small", "No evidence recorded for this " + NOUN + "."));
    return box;
  }

  function openDetail(d) {
    const box = ui.detail;
    box.dataset.index = d.i;
    $("detail-img").src = d.img;
    $("detail-img").alt = "test " + NOUN + " " + d.i;
    $("detail-title").textContent = "Test " + NOUN + " #" + d.i;
    const labels = $("detail-labels");
    labels.replaceChildren("true ", el("b", "truthtxt", DATA.classes[d.y]), " · predicted ",
                           el("b", d.p === d.y ? "" : "wrongtxt", DATA.classes[d.p]));
    $("detail-probs").replaceChildren(...probRows(d));
    $("detail-measures").replaceChildren(...measureRows(d));
    $("detail-members").replaceChildren(...memberRows(d));
    $("detail-ranks").replaceChildren(...rankRows(d));
    $("detail-evidence").replaceChildren(evidence(d));
    box.hidden = false;
    $("detail-close").focus();
  }

  function closeDetail() { ui.detail.hidden = true; }

  // A click on an error cell shows exactly those digits.
  function showCell(cell) {
    if ("confident_wrong" in DATA.rankings) ui.ranking.value = "confident_wrong";
    ui.truth.value = cell.dataset.true;
    ui.pred.value = cell.dataset.pred;
    render();
    $("galleries").scrollIntoView();
  }

  [ui.ranking, ui.truth, ui.pred, ui.count].forEach(function (s) { s.addEventListener("change", render); });
  $("detail-close").addEventListener("click", closeDetail);
  ui.detail.addEventListener("click", function (e) { if (e.target === ui.detail) closeDetail(); });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") closeDetail(); });
  document.querySelectorAll("#confusion td.hit").forEach(function (cell) {
    cell.addEventListener("click", function () { showCell(cell); });
  });
  render();
  window.ambiguousDigits = { DATA: DATA, DIGITS: DIGITS, NOUN: NOUN, el: el, row: row, probRows: probRows,
                             evidence: evidence, openDetail: openDetail };
}());
