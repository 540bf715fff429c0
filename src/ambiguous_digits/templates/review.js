// Review mode: a queue of ranked digits and one verdict each, by key or button. Verdicts are saved in
// localStorage under the run's id, exported as review.csv, and merged back from one (disagreements are
// listed for the reviewer to settle, never overwritten).
(function () {
  "use strict";
  const A = window.ambiguousDigits;
  const DATA = A.DATA, DIGITS = A.DIGITS, NOUN = A.NOUN, el = A.el;
  const $ = function (id) { return document.getElementById(id); };
  const STORE = "ambiguous-digits:review:" + DATA.run_id;
  const COLUMNS = ["split", "index", "given_label", "verdict", "new_label", "note", "reviewed_at"];
  const VERDICTS = ["correct", "relabel", "exclude"];
  const UNDO_KEPT = 500;  // undo steps kept in storage, so an undo works after a reload too
  const box = $("review");
  const ui = { ranking: $("review-ranking"), count: $("review-count"), progress: $("review-progress"),
               status: $("review-status"), queue: $("review-queue"), note: $("review-note"),
               conflicts: $("review-conflicts"), conflictRows: $("review-conflict-rows") };
  const state = load();

  // ---- storage ----
  function load() {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(STORE)); } catch (e) { saved = null; }
    return Object.assign({ verdicts: {}, undo: [], conflicts: [], ranking: null, count: null, at: 0 }, saved || {});
  }

  function save() {
    try { localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) {
      say("This browser did not save the verdicts (" + e.name + "): export them to keep them.");
    }
  }

  function keyOf(index) { return "test:" + index; }

  function say(text) { ui.status.textContent = text; }

  // ---- the queue ----
  function rankingNames() {
    // The gallery's order (the JSON's keys are sorted), suspected label errors first: the likeliest queue.
    return Array.from($("ranking").options, function (o) { return o.value; }).sort(function (a, b) {
      return (b === "label_issues") - (a === "label_issues");
    });
  }

  function queue() { return DATA.rankings[state.ranking].order.slice(0, state.count); }

  function current() { return DIGITS.get(queue()[state.at]); }

  function cls(c) { return DATA.classes[c]; }

  function describe(v) {
    const what = v.verdict === "relabel" ? "relabel to " + cls(v.new_label)
      : (v.verdict === "correct" ? "label correct" : "exclude");
    return what + (v.note ? " (“" + v.note + "”)" : "");
  }

  function go(at) {
    const n = queue().length;
    state.at = Math.max(0, Math.min(n - 1, at));
    save();
    show();
  }

  function decide(verdict, newLabel) {
    const d = current();
    if (!d) return;
    if (verdict === "relabel" && newLabel >= DATA.classes.length) return;
    if (verdict === "relabel" && newLabel === d.y) verdict = "correct";  // relabelling to the given label confirms it
    const key = keyOf(d.i);
    state.undo = state.undo.concat([{ key: key, index: d.i, before: state.verdicts[key] || null }]).slice(-UNDO_KEPT);
    state.verdicts[key] = { split: "test", index: d.i, given_label: d.y, verdict: verdict,
                            new_label: verdict === "relabel" ? newLabel : null, note: ui.note.value.trim(),
                            reviewed_at: new Date().toISOString() };
    state.conflicts = state.conflicts.filter(function (c) { return c.key !== key; });  // a fresh verdict settles it
    const last = state.at === queue().length - 1;
    say("#" + d.i + ": " + describe(state.verdicts[key]) + "." + (last ? " That was the end of the queue." : ""));
    go(state.at + 1);
  }

  function undo() {
    const step = state.undo.pop();
    if (!step) { say("Nothing to undo."); return; }
    if (step.before) state.verdicts[step.key] = step.before; else delete state.verdicts[step.key];
    const at = queue().indexOf(step.index);
    say("Undone: the verdict on #" + step.index + (at < 0 ? " (not in this queue)." : "."));
    go(at < 0 ? state.at : at);
  }

  // ---- drawing ----
  function show() {
    const order = queue(), d = current();
    const reviewed = order.filter(function (i) { return keyOf(i) in state.verdicts; }).length;
    ui.progress.textContent = reviewed + " of " + order.length + " reviewed";
    Array.from(ui.queue.children).forEach(function (li, k) {
      const v = state.verdicts[keyOf(order[k])];
      li.dataset.verdict = v ? v.verdict : "";
      li.classList.toggle("here", k === state.at);
    });
    box.dataset.index = d.i;
    $("review-img").src = d.img;
    $("review-img").alt = "test " + NOUN + " " + d.i;
    $("review-heading").textContent = "Test " + NOUN + " #" + d.i + " · " + (state.at + 1) + " of " + order.length;
    const labels = ["given ", el("b", "truthtxt", cls(d.y)), " · predicted ", el("b", d.p === d.y ? "" : "wrongtxt", cls(d.p))];
    if (d.issue) labels.push(" · suggested ", el("b", d.issue.suggested === d.y ? "" : "wrongtxt", cls(d.issue.suggested)));
    $("review-labels").replaceChildren(...labels);
    const v = state.verdicts[keyOf(d.i)];
    box.dataset.verdict = v ? v.verdict : "";
    $("review-verdict").textContent = v ? "Verdict: " + describe(v) : "Not reviewed yet";
    ui.note.value = v ? v.note : "";
    $("review-evidence").replaceChildren(A.evidence(d));
    $("review-votes").replaceChildren(...voteRows(d));
    $("review-probs").replaceChildren(...A.probRows(d));
    const here = ui.queue.children[state.at];
    if (here && !box.hidden) here.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  function voteRows(d) {
    const rows = [A.row(["member", "vote", "p(vote)", "seed"])];
    d.votes.forEach(function (v, m) {
      rows.push(A.row(["#" + (m + 1), cls(v), d.vote_probs[m].toFixed(4), String(DATA.seeds[m])],
                      "vote" + (v === d.y ? "" : " disagrees")));
    });
    return rows;
  }

  function buildQueue() {
    ui.queue.replaceChildren(...queue().map(function (i, k) {
      const li = el("li"), b = el("button"), img = el("img", "pix");
      b.type = "button";
      b.tabIndex = -1;  // the arrows move through the queue; Tab goes to the controls
      b.title = "#" + i;
      img.src = DIGITS.get(i).img;
      img.alt = "test " + NOUN + " " + i;
      b.appendChild(img);
      b.addEventListener("click", function () { go(k); box.focus(); });
      li.dataset.index = i;
      li.appendChild(b);
      return li;
    }));
  }

  function showConflicts() {
    ui.conflicts.hidden = !state.conflicts.length;
    ui.conflictRows.replaceChildren(...state.conflicts.map(function (c) {
      const tr = el("tr");
      tr.dataset.index = c.mine.index;
      tr.appendChild(el("th", "", "#" + c.mine.index + " (given " + cls(c.mine.given_label) + ")"));
      [["mine", "keep mine: "], ["theirs", "take theirs: "]].forEach(function (side) {
        const td = el("td"), b = el("button", "pick", side[1] + describe(c[side[0]]));
        b.type = "button";
        b.dataset.side = side[0];
        b.title = "reviewed " + (c[side[0]].reviewed_at || "at an unknown time");
        b.addEventListener("click", function () { settle(c.key, side[0]); });
        td.appendChild(b);
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  function settle(key, side) {
    const c = state.conflicts.find(function (x) { return x.key === key; });
    state.verdicts[key] = c[side];
    state.conflicts = state.conflicts.filter(function (x) { return x.key !== key; });
    save();
    showConflicts();
    show();
    box.focus();
  }

  // ---- export and import ----
  function csvCell(v) {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function exportCsv() {
    const rows = Object.values(state.verdicts).sort(function (a, b) { return a.index - b.index; });
    const lines = [COLUMNS.join(",")].concat(rows.map(function (r) {
      return COLUMNS.map(function (c) { return csvCell(r[c]); }).join(",");
    }));
    const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
    const link = el("a");
    link.href = url;
    link.download = "review.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    const unsettled = state.conflicts.length;
    say("Exported " + rows.length + " verdict" + (rows.length === 1 ? "" : "s") + " to review.csv" + (unsettled ?
        " (" + unsettled + " disagreement" + (unsettled === 1 ? "" : "s") + " not settled: yours went in)." : "."));
  }

  function parseCsv(text) {
    const rows = [];
    let row = [], cell = "", quoted = false;
    for (let k = 0; k < text.length; k++) {
      const ch = text[k];
      if (quoted) {
        if (ch !== '"') cell += ch;
        else if (text[k + 1] === '"') { cell += '"'; k++; } else quoted = false;
      } else if (ch === '"') quoted = true;
      else if (ch === ",") { row.push(cell); cell = ""; }
      else if (ch === "\n" || ch === "\r") {
        if (ch === "\r" && text[k + 1] === "\n") k++;
        row.push(cell); rows.push(row); row = []; cell = "";
      } else cell += ch;
    }
    if (cell !== "" || row.length) { row.push(cell); rows.push(row); }
    return rows.filter(function (r) { return r.length > 1 || r[0] !== ""; });
  }

  function int(s) { return /^\d+$/.test(s) ? Number(s) : -1; }  // -1: not a whole number, so never a valid one

  // review.csv's rows as verdicts; the line numbers of rows that are not valid verdicts on this run's labels.
  function fromCsv(text) {
    const rows = parseCsv(text.replace(/^\uFEFF/, "")), head = rows.shift() || [];
    const missing = COLUMNS.filter(function (c) { return head.indexOf(c) < 0; });
    if (missing.length) throw new Error("it has no column " + missing.join(", "));
    const good = [], bad = [];
    rows.forEach(function (cells, n) {
      const r = {};
      COLUMNS.forEach(function (c) { r[c] = (cells[head.indexOf(c)] || "").trim(); });
      const index = int(r.index), given = int(r.given_label), label = r.new_label === "" ? null : int(r.new_label);
      const d = DIGITS.get(index);
      const ok = r.split === "test" && index >= 0 && given >= 0 && given < DATA.classes.length
        && VERDICTS.indexOf(r.verdict) >= 0
        && (r.verdict === "relabel" ? label >= 0 && label < DATA.classes.length && label !== given : label === null)
        && (!d || d.y === given);
      if (!ok) { bad.push(n + 2); return; }
      good.push({ split: "test", index: index, given_label: given, verdict: r.verdict, new_label: label,
                  note: r.note, reviewed_at: r.reviewed_at });
    });
    return { good: good, bad: bad };
  }

  function merge(rows) {
    const n = { added: 0, same: 0, differ: 0 };
    rows.forEach(function (r) {
      const key = keyOf(r.index), mine = state.verdicts[key];
      if (!mine) { state.verdicts[key] = r; n.added++; return; }
      if (mine.verdict === r.verdict && mine.new_label === r.new_label) { n.same++; return; }
      state.conflicts = state.conflicts.filter(function (c) { return c.key !== key; })
        .concat([{ key: key, mine: mine, theirs: r }]);
      n.differ++;
    });
    return n;
  }

  function importFile(file) {
    file.text().then(function (text) {
      let found;
      try { found = fromCsv(text); } catch (e) { say(file.name + " was not imported: " + e.message + "."); return; }
      const n = merge(found.good);
      save();
      showConflicts();
      show();
      say(file.name + ": " + n.added + " new verdicts, " + n.same + " the same as yours, " + n.differ +
          " different (listed above)" + (found.bad.length ? "; lines " + found.bad.join(", ") +
          " skipped (not a verdict on this run's labels)" : "") + ".");
    });
  }

  // ---- opening, keys, buttons ----
  function open() {
    box.hidden = false;
    document.body.classList.add("reviewing");
    if (location.hash !== "#review") history.replaceState(null, "", "#review");
    show();
    box.focus();
  }

  function close() {
    box.hidden = true;
    document.body.classList.remove("reviewing");
    history.replaceState(null, "", location.pathname + location.search);
  }

  function typing(e) {
    const t = e.target;
    return t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].indexOf(t.tagName) >= 0;
  }

  const KEYS = {
    c: function () { decide("correct"); }, x: function () { decide("exclude"); }, u: undo, e: exportCsv,
    ArrowRight: function () { go(state.at + 1); }, ArrowDown: function () { go(state.at + 1); },
    ArrowLeft: function () { go(state.at - 1); }, ArrowUp: function () { go(state.at - 1); }, Escape: close,
  };

  document.addEventListener("keydown", function (e) {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (box.hidden) {
      if (e.key === "r" && $("detail").hidden) { e.preventDefault(); open(); }
      return;
    }
    if (/^[0-9]$/.test(e.key)) decide("relabel", Number(e.key));
    else if (Object.prototype.hasOwnProperty.call(KEYS, e.key)) KEYS[e.key]();
    else return;
    e.preventDefault();
  });

  function changed() {
    state.ranking = ui.ranking.value;
    state.count = Number(ui.count.value);
    state.at = 0;
    save();
    buildQueue();
    show();
    box.focus();  // the keys act on the review again, not on the select
  }

  function init() {
    const names = rankingNames();
    ui.ranking.replaceChildren(...names.map(function (n) {
      const o = el("option", "", DATA.rankings[n].title);
      o.value = n;
      return o;
    }));
    if (!(state.ranking in DATA.rankings)) state.ranking = names[0];
    const counts = Array.from(ui.count.options).map(function (o) { return Number(o.value); });
    if (counts.indexOf(state.count) < 0) state.count = Number(ui.count.value);
    ui.ranking.value = state.ranking;
    ui.count.value = String(state.count);
    state.at = Math.max(0, Math.min(state.at, queue().length - 1));
    buildQueue();
    showConflicts();
    [ui.ranking, ui.count].forEach(function (s) { s.addEventListener("change", changed); });
    $("review-buttons").addEventListener("click", function (e) {
      const b = e.target.closest("button");
      if (!b) return;
      if (b.dataset.verdict) decide(b.dataset.verdict);
      else if (b.dataset.relabel) decide("relabel", Number(b.dataset.relabel));
      else if (b.id === "review-undo") undo();
      else if (b.id === "review-prev") go(state.at - 1);
      else if (b.id === "review-next") go(state.at + 1);
    });
    $("review-export").addEventListener("click", exportCsv);
    $("review-close").addEventListener("click", close);
    $("review-import").addEventListener("change", function (e) {
      if (e.target.files.length) importFile(e.target.files[0]);
      e.target.value = "";  // the same file may be chosen again
    });
    ui.note.addEventListener("change", function () {
      const v = state.verdicts[keyOf(current().i)];
      if (v) { v.note = ui.note.value.trim(); save(); }
    });
    ui.note.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === "Escape") box.focus(); });
    window.addEventListener("hashchange", function () { if (location.hash === "#review") open(); });
    if (location.hash === "#review") open(); else show();
    performance.mark("review-ready");
  }

  init();
}());
