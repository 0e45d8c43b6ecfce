// Annotator page. Every server string is shown with textContent (never innerHTML).
"use strict";
(function () {
  const token = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
  const api = "/api/a/" + encodeURIComponent(token);
  const $ = (id) => document.getElementById(id);
  const LABELS = { left: "Left better", right: "Right better", tie: "Tie", both_bad: "Both bad" };
  const KEYS = { left: "1", right: "2", tie: "3", both_bad: "4" };

  let state = null;
  let answers = {};
  let row = 0;
  let busy = false;
  let loaded = { left: false, right: false };
  let flagSide = null;
  let zoomSide = null;

  function rows() { return state ? [...state.criteria, "overall"] : []; }
  function question(name) {  // every question's text comes from the study (no generic fallback)
    const q = (state.questions || []).find((x) => x.name === name);
    return q ? q.text : name;
  }
  function setStatus(text) { $("status").textContent = text; }
  function showError(text) {
    $("task").hidden = true; $("done").hidden = true; $("error").hidden = false;
    $("error-text").textContent = text;
  }

  async function call(method, path, body) {
    const opts = { method, headers: { "Accept": "application/json" } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const r = await fetch(api + path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : r.statusText;
      const err = new Error(detail); err.status = r.status; throw err;
    }
    return data;
  }

  function renderQuestions() {
    const box = $("questions");
    box.textContent = "";
    rows().forEach((name, i) => {
      const div = document.createElement("div");
      div.className = "question" + (i === row ? " active" : "") + (i < row ? " answered" : "");
      div.dataset.row = String(i);
      const label = document.createElement("div");
      label.className = "q-label";
      label.textContent = question(name);
      div.appendChild(label);
      const btns = document.createElement("div");
      btns.className = "choices";
      state.choices.forEach((c) => {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "choice" + (answers[name] === c ? " picked" : "");
        b.dataset.choice = c;
        const k = document.createElement("kbd"); k.textContent = KEYS[c];
        b.appendChild(k);
        b.appendChild(document.createTextNode(" " + LABELS[c]));
        b.addEventListener("click", () => { if (i <= row) { row = i; choose(c); } });
        btns.appendChild(b);
      });
      div.appendChild(btns);
      box.appendChild(div);
    });
  }

  function renderProgress() {
    const p = state.progress;
    const current = Math.min(p.done + 1, p.total);
    $("progress-text").textContent = state.task ? `Task ${current} of ${p.total}` : `${p.done} of ${p.total} done`;
    $("progress-fill").style.width = (p.total ? (100 * p.done / p.total) : 0).toFixed(1) + "%";
  }

  function setImage(side, url) {
    const img = $("img-" + side);
    loaded[side] = false;
    $("err-" + side).hidden = true;
    img.classList.add("loading");
    document.body.dataset.ready = "0";
    const settled = () => {
      loaded[side] = true; img.classList.remove("loading");
      if (loaded.left && loaded.right) document.body.dataset.ready = "1";  // votes are taken from here on
    };
    img.onload = settled;
    img.onerror = () => { $("err-" + side).hidden = false; settled(); };
    if (img.getAttribute("src") === url && img.complete && img.naturalWidth) { settled(); return; }
    img.src = url;
  }

  function render() {
    $("study-name").textContent = state.study;
    document.title = state.study + " \u2014 review";
    $("instructions").textContent = state.instructions;
    if (!render.opened) {  // open on wide screens; one line on a phone, tap to read
      $("instructions-box").open = window.matchMedia("(min-width: 761px)").matches;
      render.opened = true;
    }
    document.body.dataset.choices = state.choices.join(" ");
    $("key-both-bad").hidden = !state.choices.includes("both_bad");
    renderProgress();
    $("error").hidden = true;
    if (!state.task) {
      $("task").hidden = true; $("done").hidden = false;
      $("done-text").textContent = `You have judged all ${state.progress.total} pairs. You can close this page.`;
      $("undo-done").disabled = !state.last_vote_task_id;
      document.body.dataset.taskId = "";
      return;
    }
    $("done").hidden = true; $("task").hidden = false;
    $("prompt").textContent = state.task.prompt;
    setImage("left", state.task.left);
    setImage("right", state.task.right);
    $("undo").disabled = !state.last_vote_task_id;
    answers = {}; row = 0;
    renderQuestions();
    document.body.dataset.taskId = String(state.task.id);
  }

  async function load() {
    try { state = await call("GET", "/state"); render(); }
    catch (e) { showError(e.status === 404 ? "This link is not valid. Check the link you were given." : "Could not load your tasks: " + e.message); }
  }

  async function submit() {
    busy = true;
    const criteria = {};
    state.criteria.forEach((c) => { criteria[c] = answers[c]; });
    try {
      await call("POST", "/votes", { task_id: state.task.id, choice: answers.overall, criteria });
      setStatus("Vote saved");
      await load();
    } catch (e) {
      setStatus("Not saved: " + e.message);
      row = rows().length - 1; renderQuestions();
    } finally { busy = false; }
  }

  function choose(choice) {
    if (busy || !state || !state.task || !state.choices.includes(choice)) return;
    if (!(loaded.left && loaded.right)) { setStatus("Wait for both images to load"); return; }
    const names = rows();
    answers[names[row]] = choice;
    row += 1;
    if (row >= names.length) { renderQuestions(); submit(); }
    else renderQuestions();
  }

  function back() {
    if (busy || row === 0) return;
    row -= 1; delete answers[rows()[row]]; renderQuestions();
  }

  async function undo() {
    if (busy || !state || !state.last_vote_task_id) return;
    busy = true;
    try {
      await call("POST", "/undo", { task_id: state.last_vote_task_id });
      setStatus("Last vote undone");
      await load();
    } catch (e) { setStatus("Undo failed: " + e.message); }
    finally { busy = false; }
  }

  function openFlag(side) {
    if (!state || !state.task) return;
    flagSide = side;
    $("flag-side").textContent = side;
    $("flag-note").value = "";
    $("flag-dialog").hidden = false;
    $("flag-send").focus();
  }
  function closeFlag() { $("flag-dialog").hidden = true; flagSide = null; }
  async function sendFlag() {
    const reason = document.querySelector('input[name="reason"]:checked').value;
    try {
      await call("POST", "/flags", { task_id: state.task.id, side: flagSide, reason, note: $("flag-note").value });
      setStatus(`Reported the ${flagSide} image as ${reason}`);
    } catch (e) { setStatus("Report failed: " + e.message); }
    closeFlag();
  }

  // Click-to-zoom: the image at its full resolution (one image pixel per CSS pixel), scrollable.
  function openZoom(side) {
    if (!state || !state.task) return;
    zoomSide = side;
    const src = $("img-" + side).getAttribute("src");
    const img = $("zoom-img");
    img.onload = () => {
      $("zoom-note").textContent = `${side} image, ${img.naturalWidth} \u00d7 ${img.naturalHeight} px (full size)`;
    };
    if (img.getAttribute("src") !== src) img.src = src; else if (img.complete) img.onload();
    $("zoom-left").classList.toggle("picked", side === "left");
    $("zoom-right").classList.toggle("picked", side === "right");
    $("zoom").hidden = false;
    document.body.classList.add("zooming");
  }
  function closeZoom() { $("zoom").hidden = true; zoomSide = null; document.body.classList.remove("zooming"); }

  document.addEventListener("keydown", (ev) => {
    if (!$("flag-dialog").hidden) { if (ev.key === "Escape") closeFlag(); return; }
    if (!$("zoom").hidden) {  // while zoomed no key votes: 1/2 or arrows switch image, Esc/Z closes
      const zmap = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right" };
      if (ev.key === "Escape" || ev.key === "z" || ev.key === "Z") { ev.preventDefault(); closeZoom(); }
      else if (zmap[ev.key]) { ev.preventDefault(); openZoom(zmap[ev.key]); }
      return;
    }
    if (ev.target && (ev.target.tagName === "TEXTAREA" || ev.target.tagName === "INPUT")) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const map = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right", "3": "tie", t: "tie", T: "tie", "4": "both_bad", b: "both_bad", B: "both_bad" };
    if (map[ev.key]) { ev.preventDefault(); choose(map[ev.key]); }
    else if (ev.key === "Backspace") { ev.preventDefault(); back(); }
    else if (ev.key === "u" || ev.key === "U") { ev.preventDefault(); undo(); }
    else if (ev.key === "z" || ev.key === "Z") { ev.preventDefault(); openZoom("left"); }
  });
  ["left", "right"].forEach((side) => {
    $("img-" + side).addEventListener("click", () => openZoom(side));
    $("zoom-" + side).addEventListener("click", (ev) => { ev.stopPropagation(); openZoom(side); });
  });
  $("zoom-close").addEventListener("click", closeZoom);
  $("zoom-view").addEventListener("click", closeZoom);
  $("undo").addEventListener("click", undo);
  $("undo-done").addEventListener("click", undo);
  document.querySelectorAll(".flag").forEach((b) => b.addEventListener("click", () => openFlag(b.dataset.side)));
  $("flag-cancel").addEventListener("click", closeFlag);
  $("flag-send").addEventListener("click", sendFlag);
  load();
})();
