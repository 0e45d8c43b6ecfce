// Admin page. Every server string is shown with textContent (never innerHTML).
"use strict";
(function () {
  const token = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
  const api = "/api/admin/" + encodeURIComponent(token);
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => { if (k === "class") e.className = v; else e.setAttribute(k, v); });
    children.forEach((c) => e.appendChild(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c))));
    return e;
  }
  const pct = (x) => (x == null ? "\u2013" : (100 * x).toFixed(1) + "%");
  const num = (x, d) => (x == null ? "\u2013" : Number(x).toFixed(d));

  let chosen = null;  // annotators excluded by hand here (null: the server's configured list)
  let confidence = 0.95;

  function table(headers, rows, cls) {  // wrapped: a wide table scrolls inside its card, not the page
    const t = el("table", { class: cls || "" });
    t.appendChild(el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))));
    const tb = el("tbody");
    rows.forEach((r) => tb.appendChild(el("tr", {}, ...r.map((c) => (c instanceof Node && c.tagName === "TD") ? c : el("td", {}, c)))));
    t.appendChild(tb);
    return el("div", { class: "table-wrap" }, t);
  }
  function ciLabel() {
    const p = 100 * confidence;
    return (Math.abs(p - Math.round(p)) < 1e-9 ? String(Math.round(p)) : p.toFixed(1)) + "% CI";
  }
  function query() {
    if (chosen === null) return "";
    const q = new URLSearchParams();
    if (chosen.length === 0) q.append("exclude", "");
    chosen.forEach((n) => q.append("exclude", n));
    return "?" + q.toString();
  }

  function ciBar(p) {
    const wrap = el("div", { class: "ci" });
    if (p.win_rate == null) return wrap;
    const range = el("div", { class: "ci-range" });
    range.style.left = (100 * p.ci_low).toFixed(1) + "%";
    range.style.width = Math.max(0.5, 100 * (p.ci_high - p.ci_low)).toFixed(1) + "%";
    const dot = el("div", { class: "ci-dot" });
    dot.style.left = (100 * p.win_rate).toFixed(1) + "%";
    wrap.appendChild(el("div", { class: "ci-mid" }));
    wrap.appendChild(range); wrap.appendChild(dot);
    return wrap;
  }

  function pairTable(pairs) {
    return table(
      ["System A", "System B", "Votes", "A wins", "Ties", "Both bad", "B wins", "Win rate A", ciLabel(), ""],
      pairs.map((p) => [p.system_a, p.system_b, p.n, p.wins, p.ties, p.both_bad, p.losses, pct(p.win_rate),
        p.win_rate == null ? "\u2013" : `${pct(p.ci_low)} \u2013 ${pct(p.ci_high)}`, el("td", { class: "ci-cell" }, ciBar(p))]),
      "pairs"
    );
  }

  function card(label, value) {
    return el("div", { class: "card stat" }, el("div", { class: "stat-value" }, value), el("div", { class: "stat-label" }, label));
  }

  function render(res) {
    confidence = res.confidence;
    if (chosen === null) chosen = [...res.exclude_chosen];
    $("study-name").textContent = res.study;
    document.title = res.study + " \u2014 admin";
    const summary = $("summary"); summary.textContent = "";
    const done = res.n_votes, total = res.n_tasks;
    summary.appendChild(card("votes", `${done} / ${total}`));
    summary.appendChild(card("annotators", res.progress.length));
    summary.appendChild(card("systems", res.systems.length));
    summary.appendChild(card("reported images", res.flags.length));
    summary.appendChild(card("excluded annotators", res.excluded_annotators.length));
    summary.querySelectorAll(".stat-value")[0].id = "vote-count";
    summary.querySelectorAll(".stat-value")[0].dataset.votes = String(done);

    $("ci-note").textContent = `(${ciLabel().replace(" CI", "")} bootstrap intervals)`;
    $("excluded-note").textContent = res.excluded_annotators.length
      ? `Leaves out ${res.n_votes_excluded} votes of: ${res.excluded_annotators.join(", ")}.` : "";
    const overall = res.criteria.overall;
    $("pairs-overall").textContent = "";
    $("pairs-overall").appendChild(pairTable(overall.pairs));

    $("bt-card").hidden = !overall.bradley_terry;
    $("bt").textContent = "";
    if (overall.bradley_terry) {
      $("bt").appendChild(table(["Rank", "System", "Strength", "log strength"],
        overall.bradley_terry.map((b) => [b.rank, b.system, num(b.strength, 3), num(b.log_strength, 3)])));
    }

    const crits = Object.keys(res.criteria).filter((c) => c !== "overall");
    $("criteria-card").hidden = crits.length === 0;
    $("criteria").textContent = "";
    crits.forEach((c) => {
      $("criteria").appendChild(el("h3", {}, c.replace(/_/g, " ")));
      $("criteria").appendChild(pairTable(res.criteria[c].pairs));
      if (res.criteria[c].bradley_terry) {
        $("criteria").appendChild(el("p", { class: "muted" }, "Bradley\u2013Terry: " +
          res.criteria[c].bradley_terry.map((b) => `${b.rank}. ${b.system}`).join(", ")));
      }
    });

    $("agreement").textContent = "";
    $("agreement").appendChild(table(["Criterion", "Alpha", "Units with \u2265 2 votes", "Votes in them"],
      Object.entries(res.criteria).map(([c, b]) => [c, num(b.agreement.krippendorff_alpha, 3), b.agreement.units, b.agreement.values])));

    $("progress").textContent = "";
    $("progress").appendChild(table(["Annotator", "Done", "Progress", "Gold right", "Median time", "Last vote", "Exclude", "Status"],
      res.progress.map((p) => {
        const bar = el("div", { class: "bar small" }, el("div", { class: "fill" }));
        bar.firstChild.style.width = (p.total ? 100 * p.done / p.total : 0).toFixed(1) + "%";
        const box = el("input", { type: "checkbox", "data-annotator": p.annotator, "aria-label": "exclude " + p.annotator });
        box.checked = chosen.includes(p.annotator);
        box.addEventListener("change", () => {
          chosen = box.checked ? [...new Set([...chosen, p.annotator])] : chosen.filter((n) => n !== p.annotator);
          load();
        });
        const gold = p.gold_answered ? `${p.gold_correct} / ${p.gold_answered} (${pct(p.gold_accuracy)})` : "\u2013";
        const status = el("td", { class: p.excluded ? "excluded" : "" }, p.excluded ? "excluded: " + p.excluded_reason : "counted");
        return [p.annotator, `${p.done} / ${p.total}`, el("td", {}, bar), gold,
          p.median_time_on_task_s == null ? "\u2013" : num(p.median_time_on_task_s, 1) + " s",
          p.last_vote ? new Date(p.last_vote).toLocaleString() : "\u2013", el("td", {}, box), status];
      }), "annotators"));
    const names = chosen.map((n) => JSON.stringify(n)).join(",");
    $("exclude-hint").textContent = `results.exclude_annotators=[${names}]` +
      (res.min_gold_accuracy == null ? "" : ` (and results.min_gold_accuracy=${res.min_gold_accuracy})`);

    $("flags").textContent = "";
    if (res.flags.length === 0) $("flags").appendChild(el("p", { class: "muted" }, "No reports."));
    else $("flags").appendChild(table(["When", "Annotator", "System", "Prompt", "Seed", "Reason", "Note"],
      res.flags.map((f) => [new Date(f.created_at).toLocaleString(), f.annotator, f.system, f.prompt, f.seed, f.reason, f.note])));

    const q = query();
    $("chart").src = api + "/chart.png" + (q ? q + "&" : "?") + "t=" + Date.now();
    document.body.dataset.loaded = "1";
  }

  async function load() {
    const r = await fetch(api + "/results" + query(), { headers: { Accept: "application/json" } });
    if (!r.ok) {
      $("error").hidden = false;
      let detail = "";
      try { detail = (await r.json()).detail || ""; } catch (e) { detail = ""; }
      $("error-text").textContent = r.status === 404 ? "This admin link is not valid." : `Server answered ${r.status}. ${detail}`;
      return;
    }
    $("error").hidden = true;
    render(await r.json());
  }

  $("export-csv").href = api + "/votes.csv";
  $("export-json").href = api + "/votes.json";
  $("export-all").href = api + "/votes.csv?include_undone=true";
  $("refresh").addEventListener("click", load);
  load();
})();
