// The stagedroll dashboard: polls the JSON API every second and draws the page.
// Every text it shows comes from the store (hostile input): it is set with textContent,
// never parsed as HTML, and its control and format characters are shown escaped.
"use strict";
(() => {
  const POLL_MS = 1000;
  const NAME_SHOWN = 80; // characters of a name shown in the list (all of it in its title)
  const KEPT_WHOLE = 32; // text up to this long is not wrapped in the list (a longer one is)
  const SVG = "http://www.w3.org/2000/svg";
  const HIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\p{Co}\p{Cn}]/gu;
  let current = null; // the rollout of the detail view, or null for the list
  let seq = 0;
  let timer = null;

  const $ = (selector) => document.querySelector(selector);

  function shown(value) {
    if (value === null || value === undefined) return "";
    return String(value).replace(HIDDEN, (c) => "\\u{" + c.codePointAt(0).toString(16) + "}");
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = shown(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells, className) {
    const tr = el("tr", null, className);
    for (const cell of cells) {
      if (cell instanceof Node) {
        const td = el("td");
        td.append(cell);
        tr.append(td);
      } else {
        tr.append(el("td", cell));
      }
    }
    return tr;
  }

  function num(x, digits = 4) {
    return x === null || x === undefined ? "\u2013" : String(Number(x.toPrecision(digits)));
  }

  function pct(x) {
    return x === null || x === undefined ? "\u2013" : num(x) + " %";
  }

  function ratio(x) {
    return x === null || x === undefined ? "\u2013" : num(100 * x, 3) + " %";
  }

  function duration(s) {
    if (s === null || s === undefined) return "\u2013";
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function iso(at) {
    if (at === null || at === undefined) return "\u2013";
    const d = new Date(at * 1000);
    return isNaN(d) ? "\u2013" : d.toISOString().slice(0, 19).replace("T", " ") + "Z";
  }

  function stageText(r) {
    if (r.mode === "off") return "off in this environment";
    if (r.mode === "fixed") return "fixed by the environment";
    if (r.stage === null || r.stage === undefined) return "\u2013";
    if (r.stage < 0) return "before the first stage";
    return (r.stage_name || "stage " + r.stage) + " (" + (r.stage + 1) + ")";
  }

  function checkList(checks) {
    const ul = el("ul", null, "checks");
    if (!checks || checks.length === 0) ul.append(el("li", "ok", "check-ok"));
    for (const c of checks || []) ul.append(el("li", c.words, "check-" + c.check));
    return ul;
  }

  function cut(text, most) {
    const chars = Array.from(String(text));
    return chars.length > most ? chars.slice(0, most - 1).join("") + "\u2026" : String(text);
  }

  // A rollout is opened by its key: its whole name, or a digest of a name too long for a URL
  // (the "rollout" field is its name cut for display).
  function link(r) {
    const a = el("a", cut(r.rollout, NAME_SHOWN), "name");
    if (Array.from(a.textContent).length <= KEPT_WHOLE) a.classList.add("nowrap");
    a.title = shown(r.rollout);
    a.href = "#/rollout/" + encodeURIComponent(r.key ?? r.rollout);
    return a;
  }

  function observed(r) {
    return r.units_capped ? "\u2013 (counters full)" : ratio(r.observed_exposure);
  }

  function renderHeader(doc) {
    $("#environment").textContent = doc.environment ? "environment " + shown(doc.environment) : "";
    const refresh = doc.refresh || { ok: true, stale: false };
    const store = $("#store");
    if (refresh.stale) {
      store.textContent = "stale since " +
        (refresh.last_success === null ? "it started" : iso(refresh.last_success));
    } else {
      store.textContent = doc.store.reachable ? "store ok" : "store unreachable";
    }
    store.className = "badge " + (doc.store.reachable && !refresh.stale ? "ok" : "bad");
    $("#updated").textContent = "updated " + iso(doc.now);
    const problems = [];
    if (!doc.store.reachable) problems.push("store unreachable: " + shown(doc.store.error));
    if (!refresh.ok) {
      problems.push("refresh failed: " + shown(refresh.error) + " (" + refresh.failures +
        (refresh.failures === 1 ? " failure" : " failures") + "; see the server's log)");
    } else if (refresh.stale) {
      problems.push("no refresh since " + iso(refresh.last_success) + " (is the store hanging?)");
    }
    const banner = $("#banner");
    banner.hidden = problems.length === 0;
    banner.textContent = problems.length === 0
      ? ""
      : problems.join(" \u00b7 ") + " (showing what was last read)";
  }

  function renderList(doc) {
    const tbody = $("#rollouts tbody");
    const rows = doc.rollouts.map((r) => {
      const state = el("span", r.state, "state state-" + (r.status || "none"));
      const name = el("span");
      name.append(link(r));
      if (r.source !== "policy") name.append(el("small", r.source === "store" ? " *" : " !"));
      const tr = row([
        name,
        r.environment || "\u2013",
        state,
        stageText(r),
        pct(r.percent),
        observed(r),
        duration(r.time_in_stage_s),
        r.waiting_for || "\u2013",
        checkList(r.checks),
      ], "rollout");
      tr.dataset.status = r.status || "none";
      tr.children[2].className = "state";
      tr.children[4].className = tr.children[5].className = "num";
      tr.children[6].className = "nowrap";
      if (Array.from(stageText(r)).length <= KEPT_WHOLE) tr.children[3].className = "nowrap";
      tr.addEventListener("click", (event) => {
        if (event.target.tagName !== "A") go(r.key ?? r.rollout);
      });
      return tr;
    });
    tbody.replaceChildren(...rows);
    $("#empty").hidden = doc.rollouts.length > 0;
    const cut = $("#truncated");
    cut.hidden = !doc.truncated;
    cut.textContent = doc.truncated
      ? "Showing " + doc.rollouts.length + " of " + doc.total + " rollouts."
      : "";
  }

  function renderDetail(d) {
    $("#detail-name").textContent = shown(d.rollout);
    const state = $("#detail-state");
    state.replaceChildren(
      el("span", d.state, "state state-" + (d.status || "none")),
      el("span", " \u00b7 " + stageText(d) + " \u00b7 set " + pct(d.percent) +
        " \u00b7 observed " + observed(d) +
        " \u00b7 in stage " + duration(d.time_in_stage_s)),
    );
    const why = d.version === null
      ? ""
      : "since " + iso(d.since) + ", version " + d.version + ", by " + shown(d.actor || "?") +
        (d.reason ? ": " + shown(d.reason) : "") +
        (d.waiting_for ? " \u2014 next: waiting for " + shown(d.waiting_for) : "");
    $("#detail-why").textContent = why;
    $("#ladder").replaceChildren(...d.stages.map((s, i) => el(
      "li", s.name + " \u00b7 " + pct(s.percent),
      i === d.stage ? "current" : i < d.stage ? "done" : "",
    )));
    $("#checks").replaceChildren(...checkList(d.checks).children);
    const arms = d.arms
      ? ["treatment", "control"].map((arm) => {
        const a = d.arms[arm];
        const tr = row([arm === "treatment" ? "treatment (new path)" : "control (old path)",
          String(a.units), String(a.error_events), ratio(a.error_rate), String(a.slow_events)]);
        for (const td of [...tr.children].slice(1)) td.className = "num";
        return tr;
      })
      : [row(["no live evidence here (steered from the store alone)", "", "", "", ""])];
    $("#arms tbody").replaceChildren(...arms);
    chart(d);
    $("#errors tbody").replaceChildren(...(d.errors.length
      ? d.errors.map((e) => row([e.arm, e.type, e.message, String(e.count), iso(e.last_seen)]))
      : [row(["no recent error", "", "", "", ""])]));
    $("#history tbody").replaceChildren(...d.history.map((h) => row([
      iso(h.at), h.action, (h.from_stage_name || h.from_stage) + " \u2192 " +
        (h.to_stage_name || h.to_stage) + " (" + h.to_status + ")", h.by, h.reason,
    ])));
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = shown(text);
    return node;
  }

  function power(k) {
    if (k < 0) return (10 ** k).toPrecision(1);
    if (k < 3) return String(10 ** k);
    const units = ["k", "M", "G", "T"];
    return k < 15 ? String(10 ** (k % 3)) + units[Math.floor(k / 3) - 1] : "1e" + k;
  }

  function chart(d) {
    const box = $("#chart");
    const W = 800, H = 240, L = 48, R = 110, T = 12, B = 28;
    const t = d.thresholds || {};
    const points = [
      ...(d.history_points || []).map((p) => ({ at: p.at, e: p.e_errors, lat: null })),
      ...(d.samples || []).map((p) => ({ at: p.at, e: p.e_errors, lat: p.e_latency })),
    ].filter((p) => p.at !== null && p.e !== null && p.e > 0).sort((a, b) => a.at - b.at);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    root.append(svg("title", {}, "e-value of the error test over time"));
    if (points.length === 0) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" },
        d.health_enabled ? "no evidence yet" : "no health gate evidence here"));
      box.replaceChildren(root);
      return;
    }
    const lg = (x) => Math.log10(Math.max(x, 1e-3));
    const lines = [t.freeze_at_errors, t.rollback_at_errors].filter((x) => x !== null && x > 0);
    const ys = [...points.map((p) => lg(p.e)), ...lines.map(lg), 0];
    const y0 = Math.floor(Math.min(...ys)), y1 = Math.ceil(Math.max(...ys) + 0.2);
    let x0 = points[0].at, x1 = Math.max(d.now || 0, points[points.length - 1].at);
    if (x1 - x0 < 1) x0 = x1 - 60;
    const X = (at) => L + ((at - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => T + (1 - (lg(v) - y0) / (y1 - y0)) * (H - T - B);
    root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    for (let k = y0; k <= y1; k++) {
      root.append(svg("text", { x: L - 6, y: Y(10 ** k) + 4, "text-anchor": "end" },
        power(k)));
    }
    root.append(svg("text", { x: L, y: H - 8 }, iso(x0)));
    root.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, iso(x1)));
    for (const [value, name] of [[t.freeze_at_errors, "freeze"], [t.rollback_at_errors, "rollback"]]) {
      if (value === null || value === undefined || !(value > 0)) continue;
      root.append(svg("line", { x1: L, y1: Y(value), x2: W - R, y2: Y(value), class: name }));
      root.append(svg("text", { x: W - R + 4, y: Y(value) + 4, class: name + "-label" },
        name + " at " + num(value, 3)));
    }
    for (const h of d.history || []) {
      if (h.at === null || h.at < x0 || h.at > x1) continue;
      root.append(svg("line", { x1: X(h.at), y1: T, x2: X(h.at), y2: H - B, class: "mark" }));
      root.append(svg("text", { x: X(h.at) + 3, y: T + 10 }, h.action));
    }
    const path = (key, cls) => {
      const usable = points.filter((p) => p[key] !== null && p[key] > 0);
      if (usable.length === 0) return;
      let dAttr = usable.map((p, i) => (i ? "L" : "M") + X(p.at).toFixed(1) + " " +
        Y(p[key]).toFixed(1)).join(" ");
      const last = usable[usable.length - 1];
      dAttr += " L" + X(x1).toFixed(1) + " " + Y(last[key]).toFixed(1);
      root.append(svg("path", { d: dAttr, class: cls }));
    };
    path("e", "evidence");
    if (t.freeze_at_latency !== null && t.freeze_at_latency !== undefined) path("lat", "latency");
    box.replaceChildren(root);
  }

  function renderMissing(name) {
    $("#detail-name").textContent = shown(name);
    $("#detail-state").textContent = "not on this dashboard (unknown, or beyond the rollouts shown)";
  }

  async function getJSON(url) {
    const res = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (res.status === 404) return null;
    if (!res.ok) throw new Error("HTTP " + res.status);
    return res.json();
  }

  async function poll() {
    const mine = ++seq;
    clearTimeout(timer);
    try {
      const doc = await getJSON("/api/rollouts");
      if (mine !== seq) return;
      renderHeader(doc);
      renderList(doc);
      if (current !== null) {
        const d = await getJSON("/api/rollouts/" + encodeURIComponent(current));
        if (mine !== seq) return;
        if (d === null) renderMissing(current);
        else renderDetail(d);
      }
      document.body.dataset.generation = String(doc.generation);
    } catch (error) {
      if (mine !== seq) return;
      const banner = $("#banner");
      banner.hidden = false;
      banner.textContent = "dashboard server unreachable: " + shown(error.message);
    }
    if (mine === seq) timer = setTimeout(poll, POLL_MS);
  }

  function go(name) {
    location.hash = "#/rollout/" + encodeURIComponent(name);
  }

  function route() {
    const hash = location.hash;
    current = null;
    if (hash.startsWith("#/rollout/")) {
      try {
        current = decodeURIComponent(hash.slice("#/rollout/".length));
      } catch (error) {
        current = null;
      }
    }
    $("#list").hidden = current !== null;
    $("#detail").hidden = current === null;
    if (current !== null) {
      $("#detail-name").textContent = shown(current);
      $("#detail-state").textContent = "loading\u2026";
    }
    poll();
  }

  window.addEventListener("hashchange", route);
  route();
})();
