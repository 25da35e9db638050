// The review page's behaviour: filters, decisions (click and keyboard), counts, and saving the
// decisions as a JSON file. Everything runs from disk: no server, no network. Decisions are
// also kept in this browser's storage (per labels file), so a reload does not lose them.
(function () {
  "use strict";
  const meta = JSON.parse(document.getElementById("review-meta").textContent);
  const cards = Array.from(document.querySelectorAll(".card"));
  const groups = Array.from(document.querySelectorAll(".group"));
  const filters = {
    category: document.getElementById("filter-category"),
    provenance: document.getElementById("filter-provenance"),
    status: document.getElementById("filter-status"),
  };
  const statusLine = document.getElementById("status");
  const storageKey = "cogseg-review:" + meta.labels_digest;
  const known = new Set(cards.map((c) => c.dataset.annId));
  const decisions = new Map(); // annotation id (text) -> "accept" | "reject"
  let current = null;
  let unsaved = false;

  function say(text) { statusLine.textContent = text; }

  function restore() {
    let saved = {};
    try { saved = JSON.parse(window.localStorage.getItem(storageKey) || "{}"); } catch (e) { return; }
    for (const [id, value] of Object.entries(saved)) {
      if (known.has(id) && (value === "accept" || value === "reject")) decisions.set(id, value);
    }
    if (decisions.size) say("restored " + decisions.size + " decisions made in this browser");
  }

  function persist() {
    try { window.localStorage.setItem(storageKey, JSON.stringify(Object.fromEntries(decisions))); }
    catch (e) { /* storage off (private window): decisions live until the page closes */ }
  }

  function paint(card) {
    const decision = decisions.get(card.dataset.annId) || "undecided";
    card.dataset.decision = decision;
    for (const b of card.querySelectorAll("button[data-decide]")) {
      b.setAttribute("aria-pressed", String(b.dataset.decide === decision));
    }
  }

  function matches(card) {
    const cat = filters.category.value, prov = filters.provenance.value;
    const status = filters.status.value;
    return (!cat || card.dataset.categoryId === cat)
      && (!prov || card.dataset.provenance === prov)
      && (!status || card.dataset.decision === status);
  }

  function count() {
    let accepted = 0, rejected = 0;
    for (const v of decisions.values()) { if (v === "accept") accepted++; else rejected++; }
    const shown = cards.filter((c) => !c.hidden).length;
    document.getElementById("count-accepted").textContent = accepted;
    document.getElementById("count-rejected").textContent = rejected;
    document.getElementById("count-undecided").textContent = cards.length - accepted - rejected;
    document.getElementById("count-shown").textContent = shown;
    document.getElementById("count-total").textContent = cards.length;
  }

  function refresh() {
    for (const card of cards) card.hidden = !matches(card);
    for (const group of groups) group.hidden = !group.querySelector(".card:not([hidden])");
    count();
  }

  function setCurrent(card) {
    if (current) current.classList.remove("current");
    current = card;
    if (!card) return;
    card.classList.add("current");
    card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
  }

  function visibleAfter(card, step) {
    // The next shown card after ``card`` in page order (before it when step is -1).
    let i = card ? cards.indexOf(card) : (step > 0 ? -1 : cards.length);
    for (i += step; i >= 0 && i < cards.length; i += step) {
      if (!cards[i].hidden) return cards[i];
    }
    return null;
  }

  function decide(card, value) {
    const id = card.dataset.annId;
    if (value) decisions.set(id, value); else decisions.delete(id);
    unsaved = true;
    paint(card);
    persist();
  }

  function decideCurrent(value) {
    const card = current && !current.hidden ? current : visibleAfter(null, 1);
    if (!card) return;
    decide(card, value);
    refresh();
    let next = value ? visibleAfter(card, 1) : card;
    if (!next || next.hidden) next = card.hidden ? visibleAfter(card, -1) : card;
    setCurrent(next);
  }

  function move(step) {
    const next = visibleAfter(current && !current.hidden ? current : null, step);
    if (next) setCurrent(next);
  }

  function save() {
    const ordered = {};
    const ids = Array.from(decisions.keys()).map(Number).sort((a, b) => a - b);
    for (const id of ids) ordered[String(id)] = decisions.get(String(id));
    const body = JSON.stringify({
      format: "cogseg-review-decisions", version: 1, labels_file: meta.labels_file,
      labels_digest: meta.labels_digest, decisions: ordered,
    }, null, 1) + "\n";
    const url = URL.createObjectURL(new Blob([body], { type: "application/json" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = meta.download_name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60000);
    unsaved = false;
    say("saved " + ids.length + " decisions as " + meta.download_name);
  }

  for (const card of cards) {
    card.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-decide]");
      if (button) {
        const value = button.dataset.decide;
        decide(card, decisions.get(card.dataset.annId) === value ? null : value);
        refresh();
      }
      setCurrent(card.hidden ? null : card);
    });
  }
  for (const select of Object.values(filters)) {
    select.addEventListener("change", () => {
      refresh();
      if (current && current.hidden) setCurrent(null);
      select.blur(); // the keys decide again at once
    });
  }
  document.getElementById("save").addEventListener("click", save);
  document.getElementById("accept-rest").addEventListener("click", () => {
    let n = 0;
    for (const card of cards) {
      if (!card.hidden && !decisions.has(card.dataset.annId)) { decide(card, "accept"); n++; }
    }
    refresh();
    say("accepted " + n + " undecided masks shown");
  });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const tag = e.target && e.target.tagName;
    if (tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA") return;
    switch (e.key) {
      case "j": case "ArrowRight": case "ArrowDown": move(1); break;
      case "k": case "ArrowLeft": case "ArrowUp": move(-1); break;
      case "a": decideCurrent("accept"); break;
      case "r": decideCurrent("reject"); break;
      case "u": case "Backspace": decideCurrent(null); break;
      default: return;
    }
    e.preventDefault();
  });
  window.addEventListener("beforeunload", (e) => {
    if (unsaved) { e.preventDefault(); e.returnValue = ""; }
  });

  restore();
  for (const card of cards) paint(card);
  refresh();
  document.body.dataset.ready = "true";
}());
