// rlhf-stack labeler page: plain JS, no build step, no network beyond this server.
// Prompts and responses are untrusted model text: they only ever reach the DOM through
// textContent. The one innerHTML is the guidelines, which the server renders from Markdown
// with raw HTML disabled.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const LETTERS = "ABCDEFGHI";
  const state = {
    session: null, csrf: null, item: null, clientId: null, editing: false,
    ranks: {}, ratings: {}, flags: {}, itemFlags: [], busy: false,
  };

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function newClientId() {
    // getRandomValues works on plain http too (randomUUID needs a secure context).
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function errorText(data, status) {
    const d = data && data.detail;
    if (Array.isArray(d)) return d.map((e) => e.msg || String(e)).join("; ");
    return d || "request failed (" + status + ")";
  }

  // A POST is retried with the same body on network errors and 5xx: its client_id makes the
  // server store it once however many times it arrives.
  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": state.csrf || "" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await fetch(path, { method, headers, credentials: "same-origin",
          body: body === undefined ? undefined : JSON.stringify(body) });
      } catch (err) {
        if (attempt < 5) { setStatus("Connection lost, retrying…"); await sleep(400 * 2 ** attempt); continue; }
        throw new Error("the server cannot be reached; your answer is kept on this page, try again");
      }
      if (res.status >= 500 && attempt < 5) { await sleep(400 * 2 ** attempt); continue; }
      const data = await res.json().catch(() => ({}));
      if (!res.ok) { const e = new Error(errorText(data, res.status)); e.status = res.status; throw e; }
      return data;
    }
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  function show(id, visible) { $(id).hidden = !visible; }

  // ---- rendering ------------------------------------------------------------------------------

  function renderPrompt(prompt) {
    const box = $("prompt");
    box.replaceChildren();
    const messages = typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
    for (const m of messages) {
      const div = document.createElement("div");
      div.className = "message " + m.role;
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = m.role;
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = m.content;
      div.append(role, text);
      box.append(div);
    }
  }

  function renderCard(response, position) {
    const li = document.createElement("li");
    li.className = "card";
    li.tabIndex = 0;
    li.draggable = true;
    li.dataset.index = String(response.index);
    const head = document.createElement("div");
    head.className = "card-head";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = "Response " + LETTERS[position];
    const rank = document.createElement("span");
    rank.className = "rank";
    head.append(label, rank);
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = response.text;
    li.append(head, text, renderExtras(response.index));
    li.addEventListener("dragstart", (e) => { li.classList.add("dragging"); e.dataTransfer.setData("text/plain", li.dataset.index); });
    li.addEventListener("dragend", () => { li.classList.remove("dragging"); });
    li.addEventListener("dragover", (e) => { e.preventDefault(); });
    li.addEventListener("drop", (e) => { e.preventDefault(); dropOn(li, e.dataTransfer.getData("text/plain")); });
    return li;
  }

  function renderExtras(index) {
    const box = document.createElement("div");
    box.className = "extras";
    const likert = document.createElement("label");
    likert.textContent = "Quality ";
    const select = document.createElement("select");
    select.className = "likert";
    const [lo, hi] = state.session.likert;
    select.append(new Option("–", ""));
    for (let v = lo; v <= hi; v++) select.append(new Option(String(v), String(v)));
    select.value = state.ratings[index] ? String(state.ratings[index]) : "";
    select.addEventListener("change", () => { state.ratings[index] = select.value ? Number(select.value) : null; });
    likert.append(select);
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Flags";
    details.append(summary);
    for (const flag of state.session.flags) {
      const lab = document.createElement("label");
      const box2 = document.createElement("input");
      box2.type = "checkbox";
      box2.value = flag.name;
      box2.checked = (state.flags[index] || []).includes(flag.name);
      box2.addEventListener("change", () => toggleFlag(index, flag.name, box2.checked));
      lab.append(box2, document.createTextNode(" " + flag.label));
      details.append(lab);
    }
    box.append(likert, details);
    return box;
  }

  function toggleFlag(index, name, on) {
    const set = new Set(state.flags[index] || []);
    if (on) set.add(name); else set.delete(name);
    state.flags[index] = Array.from(set);
  }

  function cards() { return Array.from(document.querySelectorAll("#responses .card")); }

  function renderItem(item, editing) {
    state.item = item;
    state.editing = editing;
    state.clientId = newClientId();
    const prev = item.previous || {};
    state.ranks = {}; state.ratings = {}; state.flags = {};
    state.itemFlags = prev.item_flags || [];
    item.responses.forEach((r) => {
      if (prev.ranks) state.ranks[r.index] = prev.ranks[r.index];
      if (prev.ratings) state.ratings[r.index] = prev.ratings[r.index];
      if (prev.flags) state.flags[r.index] = prev.flags[r.index];
    });
    $("item-id").textContent = item.id;
    renderPrompt(item.prompt);
    $("responses").replaceChildren(...item.responses.map(renderCard));
    $("note").value = prev.note || "";
    $("reason").value = prev.reason || "";
    show("pair-choices", item.k === 2);
    $("help").textContent = item.k === 2
      ? "Press a / b for the better response, t for a tie, x if both are bad; Enter submits."
      : "Focus a response (click or ↑/↓), press 1–" + item.k + " to rank it (1 = best, same digit = tie, 0 clears); drag to reorder; Enter submits.";
    setStatus(editing ? "Editing your answer (version " + prev.version + "): submitting saves a new version." : "");
    show("work", true); show("done", false);
    updateRanks();
    cards()[0].focus();
  }

  function denseRanks() {
    // 1,1,3,3 -> 1,1,2,2: only the order matters, and the rankings format wants dense ranks.
    const values = Array.from(new Set(Object.values(state.ranks))).sort((a, b) => a - b);
    const dense = {};
    for (const [index, r] of Object.entries(state.ranks)) dense[index] = values.indexOf(r) + 1;
    return dense;
  }

  function updateRanks() {
    const counts = {};
    for (const r of Object.values(state.ranks)) counts[r] = (counts[r] || 0) + 1;
    for (const card of cards()) {
      const r = state.ranks[card.dataset.index];
      card.querySelector(".rank").textContent = r ? "rank " + r + (counts[r] > 1 ? " (tie)" : "") : "not ranked";
      card.classList.toggle("ranked", Boolean(r));
    }
    const complete = state.item && cards().every((c) => state.ranks[c.dataset.index]);
    $("submit").disabled = !complete || state.busy;
    for (const b of document.querySelectorAll("#pair-choices button")) {
      b.classList.toggle("chosen", pairChoice() === b.dataset.choice);
    }
  }

  function pairChoice() {
    const [a, b] = cards().map((c) => state.ranks[c.dataset.index]);
    if (!a || !b) return null;
    if (a === b) return state.itemFlags.includes("both_bad") ? "both_bad" : "tie";
    return a < b ? "a" : "b";
  }

  // ---- ranking actions ------------------------------------------------------------------------

  function setRank(card, rank) {
    if (rank) state.ranks[card.dataset.index] = rank; else delete state.ranks[card.dataset.index];
    updateRanks();
  }

  function choosePair(choice) {
    const [a, b] = cards();
    const ranks = { a: [1, 2], b: [2, 1], tie: [1, 1], both_bad: [1, 1] }[choice];
    state.itemFlags = choice === "both_bad" ? ["both_bad"] : [];
    state.ranks[a.dataset.index] = ranks[0];
    state.ranks[b.dataset.index] = ranks[1];
    updateRanks();
  }

  function dropOn(target, draggedIndex) {
    // Dragging sets a strict order: ranks follow the new top-to-bottom positions.
    const list = $("responses");
    const dragged = cards().find((c) => c.dataset.index === draggedIndex);
    if (!dragged || dragged === target) return;
    const all = cards();
    list.insertBefore(dragged, all.indexOf(dragged) < all.indexOf(target) ? target.nextSibling : target);
    cards().forEach((c, pos) => { state.ranks[c.dataset.index] = pos + 1; });
    state.itemFlags = [];
    updateRanks();
  }

  function moveFocus(delta) {
    const all = cards();
    const at = all.indexOf(document.activeElement.closest ? document.activeElement.closest(".card") : null);
    const next = all[Math.min(all.length - 1, Math.max(0, (at < 0 ? 0 : at + delta)))];
    if (next) next.focus();
  }

  function onKey(e) {
    const el = document.activeElement;
    const tag = el ? el.tagName : "";
    if (tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT" || !state.item || $("work").hidden) {
      if (e.key === "Escape" && el) el.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const card = el && el.classList && el.classList.contains("card") ? el : null;
    const k = state.item.k;
    if (e.key === "ArrowDown" || e.key === "ArrowRight" || e.key === "j") { moveFocus(1); e.preventDefault(); }
    else if (e.key === "ArrowUp" || e.key === "ArrowLeft" || e.key === "k") { moveFocus(-1); e.preventDefault(); }
    else if (/^[1-9]$/.test(e.key) && Number(e.key) <= k && card) {
      setRank(card, Number(e.key)); state.itemFlags = []; moveFocus(1); e.preventDefault();
    }
    else if ((e.key === "0" || e.key === "Backspace" || e.key === "Delete") && card) { setRank(card, 0); e.preventDefault(); }
    else if (k === 2 && { a: 1, b: 1, t: 1, x: 1 }[e.key]) {
      choosePair({ a: "a", b: "b", t: "tie", x: "both_bad" }[e.key]); e.preventDefault();
    }
    else if (e.key === "Enter" && tag !== "BUTTON" && tag !== "SUMMARY") { e.preventDefault(); submit("ranked"); }
    else if (e.key === "?") toggle("guidelines");
  }

  // ---- server round trips ---------------------------------------------------------------------

  function payload(kind) {
    const dense = denseRanks();
    const order = state.item.responses.map((r) => r.index).sort((a, b) => a - b);
    const body = { client_id: state.clientId, item_id: state.item.id, kind,
      note: $("note").value, reason: $("reason").value, item_flags: state.itemFlags,
      ratings: order.map((i) => state.ratings[i] || null),
      flags: order.map((i) => state.flags[i] || []) };
    if (kind === "ranked") body.ranks = order.map((i) => dense[i]);
    else body.item_flags = [];
    return body;
  }

  async function submit(kind) {
    if (state.busy || !state.item) return;
    if (kind === "ranked" && $("submit").disabled) { setStatus("Rank every response first.", true); return; }
    if (kind !== "ranked" && !$("reason").value.trim()) {
      setStatus("Please give a reason.", true); $("reason").focus(); return;
    }
    state.busy = true; updateRanks();
    try {
      const ack = await api("POST", "/api/submit", payload(kind));
      setStatus("Saved " + ack.item_id + " (version " + ack.version + ").");
      await loadNext(true);
    } catch (err) {
      setStatus(err.message, true);
    } finally {
      state.busy = false; updateRanks();
    }
  }

  function showProgress(p) {
    $("progress").textContent = "You: " + p.mine + " done · All: " + p.complete + "/" + p.items
      + " items complete (" + p.min_annotations + " each) · " + p.submissions + " submissions";
  }

  async function loadNext(keepStatus) {
    const data = await api("GET", "/api/next");
    showProgress(data.progress);
    if (data.item) {
      const status = $("status").textContent;
      renderItem(data.item, false);
      if (keepStatus) setStatus(status);
    } else {
      state.item = null; show("work", false); show("done", true);
    }
  }

  async function openItem(itemId) {
    try {
      const data = await api("GET", "/api/items/" + encodeURIComponent(itemId));
      showProgress(data.progress);
      renderItem(data.item, true);
      toggle("history", false);
    } catch (err) { setStatus(err.message, true); }
  }

  async function loadHistory() {
    const data = await api("GET", "/api/history");
    const list = $("history-list");
    list.replaceChildren();
    for (const h of data.items) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      const prompt = typeof h.prompt === "string" ? h.prompt : h.prompt[h.prompt.length - 1].content;
      button.textContent = prompt.slice(0, 80) + " — " + h.kind + " v" + h.version;
      button.addEventListener("click", () => openItem(h.item_id));
      li.append(button);
      list.append(li);
    }
  }

  function toggle(id, force) {
    const visible = force === undefined ? $(id).hidden : force;
    $(id).hidden = !visible;
    $(id + "-btn").setAttribute("aria-expanded", String(visible));
    if (id === "history" && visible) loadHistory().catch((err) => setStatus(err.message, true));
  }

  async function login(token) {
    try {
      const data = await api("POST", "/api/login", { token });
      state.csrf = data.csrf; state.session.annotator = data.annotator;
      return true;
    } catch (err) { setStatus(err.message, true); $("login").hidden = false; return false; }
  }

  async function enter() {
    $("who").textContent = "annotator: " + state.session.annotator;
    show("login", false);
    $("logout-btn").hidden = !state.session.require_tokens;
    await loadNext(false);
  }

  async function start() {
    state.session = await api("GET", "/api/session");
    state.csrf = state.session.csrf;
    if (state.session.guidelines_html) $("guidelines").innerHTML = state.session.guidelines_html;
    else $("guidelines-btn").hidden = true;
    const match = location.hash.match(/token=([^&]+)/);
    if (match) {
      history.replaceState(null, "", location.pathname);  // the token leaves the address bar
      await login(decodeURIComponent(match[1]));
    }
    if (!state.session.annotator) { show("login", true); $("token").focus(); return; }
    await enter();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.addEventListener("keydown", onKey);
    $("submit").addEventListener("click", () => submit("ranked"));
    $("not-rankable").addEventListener("click", () => submit("not_rankable"));
    $("skip").addEventListener("click", () => submit("skip"));
    $("guidelines-btn").addEventListener("click", () => toggle("guidelines"));
    $("history-btn").addEventListener("click", () => toggle("history"));
    $("logout-btn").addEventListener("click", async () => {
      const data = await api("POST", "/api/logout", {});
      state.csrf = data.csrf; location.reload();
    });
    for (const b of document.querySelectorAll("#pair-choices button")) {
      b.addEventListener("click", () => choosePair(b.dataset.choice));
    }
    $("login-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      if (await login($("token").value.trim())) await enter();
    });
    start().catch((err) => setStatus(err.message, true));
  });
})();
