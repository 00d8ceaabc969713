"use strict";
(function () {
  const UNSURE = "Unsure";
  let STRENGTHS = [];  // the server's scale, strongest first, from /api/items
  let items = [], saved = {}, idx = 0, choice = "", strength = "", busy = false;
  const $ = (id) => document.getElementById(id);

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }
  function countDone() { return items.filter((it) => saved[it.item_id]).length; }
  function firstOpen(from) {
    for (let k = 0; k < items.length; k++) {
      const j = (from + k) % items.length;
      if (!saved[items[j].item_id]) return j;
    }
    return -1;
  }
  function valid() { return strength !== "" && (choice !== "" || strength === UNSURE); }

  function render() {
    $("progress").textContent = countDone() + " / " + items.length + " annotated";
    if (!items.length) { $("position").textContent = "the sheet is empty"; return; }
    const it = items[idx];
    $("position").textContent = "Item " + (idx + 1) + " of " + items.length;
    $("saved-flag").textContent = saved[it.item_id] ? "saved" : "not yet annotated";
    $("question").textContent = it.question;
    $("answer-a").textContent = it.answer_a;
    $("answer-b").textContent = it.answer_b;
    document.body.dataset.itemId = it.item_id;
    paintSelection();
  }
  function paintSelection() {
    $("choose-a").classList.toggle("selected", choice === "A");
    $("choose-b").classList.toggle("selected", choice === "B");
    $("box-a").classList.toggle("chosen", choice === "A");
    $("box-b").classList.toggle("chosen", choice === "B");
    document.querySelectorAll("#strengths button").forEach((b) => {
      b.classList.toggle("selected", b.dataset.strength === strength);
    });
    $("save").disabled = !valid() || busy;
  }
  function show(j) {
    if (!items.length) return;
    idx = (j + items.length) % items.length;
    const s = saved[items[idx].item_id];
    choice = s ? s.choice : "";
    strength = s ? s.strength : "";
    $("comment").value = s ? s.comment : "";
    setStatus("", false);
    render();
  }
  function pickChoice(c) { choice = c; paintSelection(); }
  function pickStrength(s) { strength = s; paintSelection(); }

  async function save() {
    if (busy || !items.length) return;
    if (!valid()) { setStatus(strength ? "Choose A or B (or Unsure)." : "Choose a strength (1-4).", true); return; }
    const it = items[idx];
    const body = { item_id: it.item_id, item_hash: it.item_hash, choice: choice, strength: strength,
                   comment: $("comment").value };
    busy = true; paintSelection(); setStatus("saving…", false);
    try {
      const r = await fetch("/api/annotate", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const data = await r.json();
      if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
      saved[it.item_id] = data.record;
      busy = false;
      const next = firstOpen(idx + 1);
      if (next === -1) { render(); setStatus("Saved. All items annotated, thank you!", false); }
      else { show(next); setStatus("Saved.", false); }
    } catch (e) {
      busy = false; paintSelection(); setStatus("Not saved: " + e.message, true);
    }
  }

  function onKey(ev) {
    if (ev.target === $("comment")) {
      if (ev.key === "Escape") { $("comment").blur(); ev.preventDefault(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); save(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (k === "a" || k === "A") pickChoice("A");
    else if (k === "b" || k === "B") pickChoice("B");
    else if (k >= "1" && k <= "9" && Number(k) <= STRENGTHS.length) pickStrength(STRENGTHS[Number(k) - 1]);
    else if (k === "Enter") save();
    else if (k === "ArrowRight" || k === "n") show(idx + 1);
    else if (k === "ArrowLeft" || k === "p") show(idx - 1);
    else if (k === "c") $("comment").focus();
    else return;
    ev.preventDefault();
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  function addStrengthButtons() {
    STRENGTHS.forEach((s, i) => {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.strength = s; b.id = "strength-" + (i + 1);
      b.textContent = s + " ";
      const kb = document.createElement("kbd"); kb.textContent = String(i + 1); b.appendChild(kb);
      b.addEventListener("click", () => pickStrength(s));
      $("strengths").appendChild(b);
    });
  }

  async function start() {
    $("choose-a").addEventListener("click", () => pickChoice("A"));
    $("choose-b").addEventListener("click", () => pickChoice("B"));
    $("save").addEventListener("click", save);
    $("prev").addEventListener("click", () => show(idx - 1));
    $("next").addEventListener("click", () => show(idx + 1));
    document.addEventListener("keydown", onKey);
    try {
      const [its, anns] = await Promise.all([getJSON("/api/items"), getJSON("/api/annotations")]);
      items = its.items; saved = anns.annotations; STRENGTHS = its.strengths;
      addStrengthButtons();
      const a = its.assignment;
      if (a && a.annotator) {
        $("assignment").textContent = a.annotator + ": " + a.assigned + " of " + a.sheet_items + " sheet items" +
          (a.annotators.length > 1 ? " (" + a.overlap_items + " shared by all " + a.annotators.length + " annotators)" : "");
      }
    } catch (e) { setStatus("Could not load: " + e.message, true); return; }
    const open = firstOpen(0);
    show(open === -1 ? 0 : open);
    if (open === -1 && items.length) setStatus("All items annotated; you can still revise.", false);
    document.body.dataset.ready = "1";
  }
  document.addEventListener("DOMContentLoaded", start);
})();
