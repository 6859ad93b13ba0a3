// Sentiloop's operator console: the JSON API of this same origin, rendered.
//
// Rules this file keeps:
// - API data reaches the page only as text (textContent, text nodes, attribute values set
//   through the DOM), never as HTML: the page also holds the operator token. The server's
//   Content-Security-Policy allows this origin's scripts only, as a second line.
// - Every failure becomes a message in the panel that asked (401 points at the token field,
//   503 without a model at Bootstrap), never a blank panel.
// - Lists poll every few seconds while the tab is visible; training progress and the event
//   feed are streams (newline-delimited JSON read with fetch, so the token can be sent,
//   which EventSource cannot).
// - Standard web APIs only (fetch streams, sessionStorage, ResizeObserver): Firefox and
//   Chromium alike.
"use strict";

(() => {
  const POLL_MS = 4000;
  const TOKEN_KEY = "sentiloop.operatorToken";
  const LABELS = ["negative", "neutral", "positive"];
  const VIEWS = ["models", "training", "predict", "label", "events"];
  // A browser keeps at most 6 HTTP/1.1 connections per origin; each stream holds one for
  // as long as it runs. Two training watches and the event feed leave the rest to polls.
  const MAX_WATCHES = 2;
  const MAX_EVENTS = 300;
  const MAX_JOB_CARDS = 4;

  const state = {
    view: "models",
    models: [],
    evaluations: [],
    jobs: [],
    evalVersion: "", // chosen by the operator; "" follows the active version
    watchers: new Map(), // job name -> AbortController of its watch stream
    cards: new Map(), // job name -> live card
    lastEventId: null,
    eventIds: new Set(),
    eventsAbort: null,
    prediction: null,
    answered: new Set(), // prediction ids labelled from the queue, hidden until it drops them
    shadow: null, // the latest GET /predict/shadow report
    datasetsLoaded: false,
  };

  // ---------------------------------------------------------------- DOM, text only

  const $ = (id) => document.getElementById(id);

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = String(value);
      else if (key === "testid") el.dataset.testid = String(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function clear(el) {
    el.replaceChildren();
    return el;
  }

  const pct = (x) => (typeof x === "number" && isFinite(x) ? `${(x * 100).toFixed(1)}%` : "—");
  const num = (x, digits = 4) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "—");

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    const two = (n) => String(n).padStart(2, "0");
    return (
      `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
      `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`
    );
  }

  function chip(text, kind, testid) {
    return h("span", { class: `chip ${kind || ""}`.trim(), testid }, text);
  }

  function statusKind(status) {
    const s = String(status || "").toLowerCase();
    if (["active", "inservice", "completed", "promoted", "ok", "serving", "ready"].includes(s)) return "ok";
    if (["failed", "rejected", "stopped", "degraded", "not_serving", "down"].includes(s)) return "bad";
    if (["inprogress", "loading", "updating", "creating", "stopping", "forced", "running",
      "settling", "cooling_down", "collecting"].includes(s)) return "warn";
    return "";
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, body, text, cause) {
      const said = (body && (body.error || body.message)) || (text || "").trim().slice(0, 300);
      super(said || (cause ? String(cause.message || cause) : `HTTP ${status}`));
      this.status = status; // 0: the request never got an answer
      this.body = body;
      this.detail = (body && body.detail) || "";
      this.said = said || "";
    }
  }

  // Where storage is disabled (some privacy settings), the token lasts as long as the page.
  let memoryToken = "";

  function readToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return memoryToken;
    }
  }

  function writeToken(value) {
    memoryToken = value;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // memoryToken holds it
    }
  }

  function headers(json) {
    const result = {};
    const token = readToken();
    if (token) result.authorization = `Bearer ${token}`;
    if (json) result["content-type"] = "application/json";
    return result;
  }

  async function send(method, path, body, signal) {
    try {
      return await fetch(path, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        signal,
      });
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      throw new ApiError(0, null, "", error);
    }
  }

  async function failure(response) {
    const text = await response.text().catch(() => "");
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = null; // Envoy's rare plain-text answers
    }
    return new ApiError(response.status, body, text);
  }

  async function api(method, path, body) {
    const response = await send(method, path, body);
    if (!response.ok) throw await failure(response);
    const text = await response.text();
    return text ? JSON.parse(text) : {};
  }

  // Reads a newline-delimited JSON stream through Envoy, one object per line.
  async function stream(path, onMessage, signal, onOpen) {
    const response = await send("GET", path, undefined, signal);
    if (!response.ok) throw await failure(response);
    if (onOpen) onOpen();
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const emit = (line) => {
      if (!line.trim()) return;
      const message = JSON.parse(line);
      // A stream that fails after its first message ends with the error as its last line.
      if (message && message.code !== undefined && message.message !== undefined &&
          Object.keys(message).every((k) => ["code", "message", "details", "error", "detail"].includes(k))) {
        throw new ApiError(500, message, "");
      }
      onMessage(message);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        emit(line);
      }
    }
    emit(buffer + decoder.decode());
  }

  // What went wrong, in words, and where the operator can act on it.
  function describe(error) {
    if (!(error instanceof ApiError)) {
      return { text: `Unexpected error in the console: ${error && error.message ? error.message : error}` };
    }
    const said = error.said;
    switch (error.status) {
      case 0:
        return { text: "Cannot reach the Sentiloop API (network error). Is the mesh running? The console keeps retrying." };
      case 401:
        return readToken()
          ? { text: `The operator token was not accepted (401): ${said}. Check it in the Operator token field at the top.`, hint: "token" }
          : { text: "Operator token needed (401): paste the token from data/secrets/operator.token into the Operator token field at the top.", hint: "token" };
      case 403:
        return { text: `Not allowed with this token (403): ${said}. Use the operator token.`, hint: "token" };
      case 503:
        if (/no model/i.test(said)) {
          return { text: "No model is serving yet — bootstrap one (Training).", hint: "bootstrap", detail: said };
        }
        return { text: `Service unavailable (503): ${said}` };
      case 429:
        return { text: `Too many requests (429): ${said}. Try again in a moment.` };
      case 504:
        return { text: `Timed out (504): ${said}` };
      default:
        return { text: `${error.status}${error.detail ? ` ${error.detail}` : ""}: ${said}` };
    }
  }

  function focusToken() {
    const input = $("operator-token");
    input.scrollIntoView({ block: "nearest" });
    input.focus();
    input.classList.remove("attention");
    void input.offsetWidth; // restart the animation
    input.classList.add("attention");
  }

  // Shows a message (a string, or an error described) in one panel's message box.
  function show(id, what, kind) {
    const box = $(id);
    if (!box) return;
    if (what === null || what === undefined) {
      box.hidden = true;
      clear(box);
      return;
    }
    const described = typeof what === "string" ? { text: what } : describe(what);
    const type = typeof what === "string" ? kind || "ok" : "error";
    box.className = `msg ${type}`;
    box.dataset.kind = type;
    box.dataset.status = what instanceof ApiError ? String(what.status) : "";
    clear(box).append(described.text);
    if (described.detail) box.append(h("span", { class: "sub" }, described.detail));
    if (described.hint === "token") {
      box.append(h("button", { type: "button", class: "link", testid: `${id}-token`, onclick: focusToken }, "Enter the token"));
    } else if (described.hint === "bootstrap") {
      box.append(h("button", { type: "button", class: "link", onclick: () => (location.hash = "#training") }, "Open Training"));
    }
    box.hidden = false;
  }

  // Disables a button while its call runs.
  async function busy(button, work) {
    button.disabled = true;
    try {
      return await work();
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- charts (uPlot)

  function chartsAvailable() {
    return typeof window.uPlot === "function";
  }

  // A uPlot chart that follows its container's width (0 while its view is hidden).
  function makeChart(container, options, data) {
    if (!chartsAvailable()) {
      clear(container).append(h("p", { class: "empty" }, "Charts are unavailable (uPlot did not load)."));
      return null;
    }
    const width = Math.max(240, container.clientWidth || 520);
    const chart = new window.uPlot({ width, ...options }, data, container);
    const observer = new ResizeObserver(() => {
      const w = container.clientWidth;
      if (w > 0 && Math.abs(w - chart.width) > 2) chart.setSize({ width: w, height: chart.height });
    });
    observer.observe(container);
    chart.release = () => {
      observer.disconnect();
      chart.destroy();
    };
    return chart;
  }

  const pctAxis = (u, values) => values.map((v) => `${Math.round(v * 100)}%`);

  // The x range from the data itself: uPlot widens a lone point's range by itself (a
  // single evaluation would span years of time axis). `alone`: half the span around one.
  function xRange(alone, margin) {
    return (u) => {
      const xs = u.data[0].filter((x) => x !== null && x !== undefined);
      if (!xs.length) return [0, 1];
      const min = Math.min(...xs);
      const max = Math.max(...xs);
      const pad = max > min ? (max - min) * margin : alone;
      return [min - pad, max + pad];
    };
  }

  // ---------------------------------------------------------------- header

  async function loadServing() {
    const version = $("serving-version");
    const detail = $("serving-detail");
    try {
      const s = await api("GET", "/predict/status");
      version.textContent = s.model_version || "none";
      const parts = [];
      if (s.status) parts.push(s.status);
      if (s.engine) parts.push(`${s.engine}${s.precision ? ` ${s.precision}` : ""}`);
      if (s.target_version && s.target_version !== s.model_version) parts.push(`loading ${s.target_version}`);
      if (s.failure_reason) parts.push(s.failure_reason);
      detail.textContent = parts.join(" · ");
      $("serving").dataset.status = s.status || "";
      $("serving").dataset.version = s.model_version || "";
    } catch (error) {
      version.textContent = "?";
      detail.textContent = describe(error).text;
      $("serving").dataset.status = "error";
    }
  }

  async function loadHealth() {
    const box = $("health");
    let body;
    try {
      body = await api("GET", "/health");
    } catch (error) {
      // 503 still carries which service is down.
      if (error instanceof ApiError && error.body && error.body.services) body = error.body;
      else {
        box.className = "health chip bad";
        box.textContent = error.status === 0 ? "unreachable" : `health: ${describe(error).text}`;
        return;
      }
    }
    const services = Object.entries(body.services || {});
    const down = services.filter(([, status]) => status !== "SERVING");
    box.className = `health chip ${down.length ? "bad" : "ok"}`;
    box.textContent = down.length
      ? `degraded: ${down.map(([name, status]) => `${name} ${status}`).join(", ")}`
      : `healthy (${services.length} services)`;
    box.title = services.map(([name, status]) => `${name}: ${status}`).join("\n");
    box.dataset.status = body.status || "";
  }

  // The drift score of the recent prediction inputs: a chip in the top bar, the whole
  // report in the Predict view's Drift panel.
  const DRIFT_STATES = {
    ok: "ok",
    drifted: "drifted",
    not_enough_traffic: "not enough traffic",
    no_model: "no model",
  };

  async function loadDrift() {
    const top = $("drift");
    const panel = $("drift-panel");
    let d;
    try {
      d = await api("GET", "/predict/drift");
      show("drift-error", null);
    } catch (error) {
      top.className = "drift chip";
      top.textContent = "drift ?";
      top.title = `GET /predict/drift: ${describe(error).text}`;
      top.dataset.state = "error";
      show("drift-error", error);
      return;
    }
    const state = d.state || "";
    const scored = state === "ok" || state === "drifted";
    top.className = `drift chip ${state === "drifted" ? "bad" : scored ? "ok" : ""}`.trim();
    top.textContent = scored
      ? `drift ${num(d.score, 3)} ${state === "drifted" ? "≥" : "<"} ${num(d.threshold, 3)}`
      : `drift: ${DRIFT_STATES[state] || state || "?"}`;
    top.title = `GET /predict/drift: ${d.reason || state}`;
    top.dataset.state = state;
    clear(panel).append(
      h("div", { class: "metrics-line" },
        chip(DRIFT_STATES[state] || state || "unknown", state === "drifted" ? "bad" : scored ? "ok" : "", "drift-state"),
        h("span", { class: "sub", testid: "drift-reason" }, d.reason || "")),
      facts([
        ["score", scored ? `${num(d.score, 3)} (threshold ${num(d.threshold, 3)})` : `— (threshold ${num(d.threshold, 3)})`, "drift-score"],
        ["token divergence", scored ? num(d.token_divergence, 3) : "—", "drift-tokens"],
        ["confidence shift", scored ? num(d.confidence_shift, 3) : "—", "drift-confidence"],
        ["window", `${d.window_size || 0} predictions (${d.min_window || 0}–${d.max_window || 0})`, "drift-window"],
        ["reference", d.reference_version ? `${d.reference_version}'s training data${d.reference_dataset ? ` (${String(d.reference_dataset).slice(0, 12)})` : ""}` : "—", "drift-reference"],
        ["computed", when(d.computed_at), "drift-computed"],
      ]));
  }

  // ---------------------------------------------------------------- models

  function latestEvaluation(version) {
    // /evaluations lists newest first.
    return state.evaluations.find((e) => e.model_version === version) || null;
  }

  function metricsCell(metrics) {
    if (!metrics || !metrics.total_samples) return h("td", {}, "—");
    return h(
      "td",
      { class: "num" },
      `acc ${pct(metrics.accuracy)}`,
      h("span", { class: "sub" }, `F1 ${pct(metrics.macro_f1)} · n=${metrics.total_samples}`),
    );
  }

  // Tables are rebuilt only when their data changed: a poll must not swap a button away
  // under the operator's pointer.
  const drawn = new Map();
  function changed(name, ...data) {
    const signature = JSON.stringify(data);
    if (drawn.get(name) === signature) return false;
    drawn.set(name, signature);
    return true;
  }

  function renderModels() {
    const latest = state.models.map((m) => (latestEvaluation(m.version) || {}).evaluation_id);
    if (!changed("models", state.models, latest, shadowingVersion())) return;
    const body = clear($("models-body"));
    if (!state.models.length) {
      body.append(h("tr", {}, h("td", { colspan: 9, class: "empty-row", testid: "models-empty" },
        "No model versions yet — bootstrap one from ", h("a", { href: "#training" }, "Training"), ".")));
      return;
    }
    for (const m of state.models) {
      const evaluation = latestEvaluation(m.version);
      const gate = m.gate;
      const activate = m.is_active
        ? chip("serving", "ok")
        : h("button", {
          type: "button",
          class: "small",
          testid: `activate-${m.version}`,
          title: `POST /models/${m.version}/activate`,
          onclick: (event) => activate_(m.version, event.currentTarget),
        }, "Activate");
      const shadow = m.is_active
        ? null
        : h("button", {
          type: "button",
          class: "small",
          testid: `shadow-start-${m.version}`,
          title: `POST /predict/shadow: ${m.version} scores live traffic beside the served version (for the duration chosen under Shadow)`,
          onclick: (event) => startShadow(m.version, event.currentTarget),
        }, "Shadow");
      body.append(
        h("tr", { class: m.is_active ? "active" : "", testid: "model-row", "data-version": m.version, "data-active": String(!!m.is_active) },
          h("td", {}, h("strong", {}, m.version), m.is_active ? h("span", { class: "sub" }, "active") : null),
          h("td", {}, chip(m.status || "—", statusKind(m.status)),
            shadowingVersion() === m.version ? chip("shadowing", "info", "model-shadowing") : null,
            m.endpoint_status ? h("span", { class: "sub" }, m.endpoint_status) : null),
          h("td", {}, m.engine ? `${m.engine}` : "—", m.precision ? h("span", { class: "sub" }, m.precision) : null),
          metricsCell(m.test_metrics),
          evaluation ? metricsCell(evaluation.feedback_metrics) : h("td", {}, "—"),
          h("td", { testid: "model-gate" },
            gate && gate.decision ? chip(gate.decision, statusKind(gate.decision)) : "—",
            gate && gate.reason ? h("span", { class: "reason", title: gate.reason }, gate.reason) : null),
          h("td", { class: "wrap" }, m.source || "—",
            m.training_job_name ? h("span", { class: "sub mono" }, m.training_job_name) : null,
            m.dataset_hash ? h("span", { class: "sub mono", title: `dataset ${m.dataset_hash}` }, `dataset ${m.dataset_hash.slice(0, 12)}`) : null),
          h("td", { class: "nowrap" }, when(m.created_at)),
          h("td", { class: "actions" }, activate, shadow),
        ),
      );
    }
  }

  async function activate_(version, button) {
    await busy(button, async () => {
      try {
        const answer = await api("POST", `/models/${encodeURIComponent(version)}/activate`, {
          reason: "activated from the web console",
        });
        const before = answer.previous_version ? ` (was ${answer.previous_version})` : "";
        show("models-msg", `${answer.model.version} is the active version${before}; serving switches once it has loaded.`);
      } catch (error) {
        show("models-msg", error);
      }
    });
    refreshSoon();
  }

  async function rollback() {
    await busy($("rollback"), async () => {
      try {
        const answer = await api("POST", "/models/rollback", { reason: "rolled back from the web console" });
        show("models-msg", `Rolled back: ${answer.model.version} is active again (${answer.rolled_back_version} was).`);
      } catch (error) {
        show("models-msg", error);
      }
    });
    refreshSoon();
  }

  async function loadModels() {
    try {
      const answer = await api("GET", "/models");
      state.models = answer.models || [];
      show("models-error", null);
    } catch (error) {
      show("models-error", error);
    }
    renderModels();
    renderEvalVersions();
    renderConfusion();
  }

  async function loadActivations() {
    const body = $("activations-body");
    try {
      const answer = await api("GET", "/models/activations");
      show("activations-error", null);
      const rows = answer.activations || [];
      if (!changed("activations", rows)) return;
      clear(body);
      if (!rows.length) {
        body.append(h("tr", {}, h("td", { colspan: 5, class: "empty-row" }, "No activation yet.")));
      }
      for (const a of rows) {
        body.append(h("tr", { testid: "activation-row", "data-version": a.version },
          h("td", { class: "nowrap" }, when(a.activated_at)),
          h("td", {}, h("strong", {}, a.version)),
          h("td", {}, a.previous_version || "—"),
          h("td", {}, chip(a.kind || "—", a.kind === "reverted" ? "bad" : "info")),
          h("td", { class: "wrap" }, a.reason || "")));
      }
    } catch (error) {
      show("activations-error", error);
    }
  }

  // ---------------------------------------------------------------- shadow evaluation

  const SHADOW_STATES = { none: "none yet", loading: "loading", running: "running", ended: "ended" };
  const SHADOW_KINDS = { loading: "warn", running: "ok" };

  // The version shadowing now ("" when none is loading or running).
  function shadowingVersion() {
    const r = state.shadow;
    return r && (r.state === "loading" || r.state === "running") ? r.shadow_version || "" : "";
  }

  async function loadShadow() {
    try {
      const answer = await api("GET", "/predict/shadow");
      state.shadow = answer.report || {};
      show("shadow-error", null);
    } catch (error) {
      show("shadow-error", error);
      return;
    }
    renderShadow();
    renderModels();
  }

  function renderShadow() {
    const r = state.shadow || {};
    const s = r.state || "none";
    const box = $("shadow-report");
    box.dataset.state = s;
    $("shadow-stop").disabled = !shadowingVersion();
    if (s === "none" || !r.shadow_version) {
      clear(box).append(h("p", { class: "empty", testid: "shadow-empty" },
        "No shadow evaluation yet: Shadow on a version that is not active starts one."));
      return;
    }
    const labelled = r.labelled || 0;
    const served = (r.served_versions || []).join(", ");
    // Both models on the same labelled requests, or nothing to compare yet.
    const versus = (shadow, answered) => (labelled
      ? `${r.shadow_version} ${pct(shadow)} · served${served ? ` (${served})` : ""} ${pct(answered)}`
      : "— (no shadowed prediction has feedback yet)");
    const ended = s === "ended";
    clear(box).append(
      h("div", { class: "metrics-line" },
        chip(SHADOW_STATES[s] || s, SHADOW_KINDS[s] || "", "shadow-state"),
        h("span", {}, "shadowed ", h("strong", { testid: "shadow-shadowed" }, String(r.shadowed || 0))),
        h("span", {}, "agreement ", h("strong", { testid: "shadow-agreement" }, r.shadowed ? pct(r.agreement) : "—")),
        h("span", {}, "labelled ", h("strong", { testid: "shadow-labelled" }, String(labelled)))),
      facts([
        ["shadow version", r.shadow_version, "shadow-version"],
        ["served versions", served || "— (nothing shadowed yet)", "shadow-served"],
        ["started", when(r.started_at), "shadow-started"],
        [ended ? "ended" : "ends", ended
          ? `${when(r.ended_at || r.ends_at)}${r.end_reason ? ` (${r.end_reason})` : ""}`
          : when(r.ends_at), "shadow-ends"],
        ["skipped", r.skipped ? `${r.skipped} (its queue was full: the answers never wait for it)` : "0", "shadow-skipped"],
        ["accuracy", versus(r.shadow_accuracy, r.served_accuracy), "shadow-accuracy"],
        ["macro-F1", versus(r.shadow_macro_f1, r.served_macro_f1), "shadow-macro-f1"],
        ["computed", when(r.computed_at), "shadow-computed"],
      ]));
  }

  async function startShadow(version, button) {
    const seconds = Number($("shadow-duration").value);
    await busy(button, async () => {
      try {
        const answer = await api("POST", "/predict/shadow", { version, duration_seconds: seconds });
        const r = answer.report || {};
        state.shadow = r;
        show("shadow-msg", `${r.shadow_version || version} shadows live traffic until ${when(r.ends_at)}` +
          `${r.state === "loading" ? " (loading it now)" : ""}; the answers still come from the served version.`);
      } catch (error) {
        show("shadow-msg", error);
      }
    });
    renderShadow();
    refreshSoon();
  }

  async function stopShadow() {
    await busy($("shadow-stop"), async () => {
      try {
        const answer = await api("POST", "/predict/shadow/stop", {});
        const r = answer.report || {};
        state.shadow = r;
        const agreed = r.shadowed ? `, agreeing with the served version on ${pct(r.agreement)}` : "";
        show("shadow-msg", `Stopped: ${r.shadow_version} shadowed ${r.shadowed || 0} request${r.shadowed === 1 ? "" : "s"}${agreed}. The report stays.`);
      } catch (error) {
        show("shadow-msg", error);
      }
    });
    renderShadow();
    refreshSoon();
  }

  // ---------------------------------------------------------------- evaluations

  async function loadEvaluations() {
    try {
      const answer = await api("GET", "/evaluations?page_size=1000");
      state.evaluations = answer.evaluations || [];
      show("eval-error", null);
    } catch (error) {
      show("eval-error", error);
    }
    renderModels();
    renderEvalChart();
    renderConfusion();
  }

  function activeVersion() {
    const active = state.models.find((m) => m.is_active);
    return active ? active.version : "";
  }

  function selectedEvalVersion() {
    return state.evalVersion || activeVersion() || (state.models[0] && state.models[0].version) || "";
  }

  function renderEvalVersions() {
    const select = $("eval-version");
    const versions = state.models.map((m) => m.version);
    const wanted = selectedEvalVersion();
    const current = Array.from(select.options).map((o) => o.value);
    if (current.join() !== versions.join()) {
      clear(select);
      for (const v of versions) select.append(h("option", { value: v }, v));
    }
    if (wanted) select.value = wanted;
    $("evaluate").disabled = !versions.length;
  }

  let evalChart = null;
  let evalChartKey = "";

  function renderEvalChart() {
    const container = $("eval-chart");
    const version = selectedEvalVersion();
    // Oldest first for the time axis.
    const rows = state.evaluations.filter((e) => e.model_version === version).reverse();
    container.dataset.points = String(rows.length);
    container.dataset.version = version;
    const empty = $("eval-empty");
    if (!rows.length) {
      if (evalChart) evalChart.release();
      evalChart = null;
      evalChartKey = "";
      clear(container);
      empty.textContent = version
        ? `No evaluation of ${version} yet: “Evaluate now” scores it on the test set and on the feedback.`
        : "No model version yet: nothing to evaluate.";
      empty.hidden = false;
      return;
    }
    empty.hidden = true;
    const seconds = rows.map((e) => new Date(e.created_at).getTime() / 1000);
    const pick = (part, field) => rows.map((e) => (e[part] && e[part].total_samples ? e[part][field] : null));
    const data = [
      seconds,
      pick("test_metrics", "macro_f1"),
      pick("test_metrics", "accuracy"),
      pick("feedback_metrics", "macro_f1"),
      pick("feedback_metrics", "accuracy"),
    ];
    const key = `${version}:${rows.length}:${rows.length ? rows[rows.length - 1].evaluation_id : ""}`;
    if (evalChart && key === evalChartKey) return;
    evalChartKey = key;
    if (evalChart) {
      evalChart.setData(data);
      return;
    }
    clear(container);
    const points = { show: true, size: 7 };
    evalChart = makeChart(container, {
      height: 220,
      legend: { live: false },
      scales: { x: { range: xRange(600, 0.05) }, y: { range: [0, 1] } },
      axes: [{}, { values: pctAxis, size: 48 }],
      series: [
        {},
        { label: "test macro-F1", stroke: "#2f6fb3", width: 2, points, value: (u, v) => pct(v) },
        { label: "test accuracy", stroke: "#8fb3d9", width: 1.5, dash: [6, 4], points, value: (u, v) => pct(v) },
        { label: "feedback macro-F1", stroke: "#c0392b", width: 2, points, value: (u, v) => pct(v), spanGaps: true },
        { label: "feedback accuracy", stroke: "#e59a8f", width: 1.5, dash: [6, 4], points, value: (u, v) => pct(v), spanGaps: true },
      ],
    }, data);
  }

  async function evaluateNow() {
    const version = selectedEvalVersion();
    if (!version) return;
    show("eval-msg", `Evaluating ${version} on the test set and the feedback …`, "info");
    await busy($("evaluate"), async () => {
      try {
        const r = await api("POST", "/evaluate", { model_version: version });
        const feedback = r.feedback_metrics && r.feedback_metrics.total_samples
          ? `; feedback accuracy ${pct(r.feedback_metrics.accuracy)} on ${r.feedback_metrics.total_samples}`
          : "; no feedback to score yet";
        show("eval-msg", `${r.model_version}: test accuracy ${pct(r.test_metrics && r.test_metrics.accuracy)}, macro-F1 ${pct(r.test_metrics && r.test_metrics.macro_f1)}${feedback}.`);
      } catch (error) {
        show("eval-msg", error);
      }
    });
    await loadEvaluations();
  }

  // ---------------------------------------------------------------- confusion matrix

  function matrixTable(metrics, testid) {
    const labels = metrics.confusion_matrix_labels && metrics.confusion_matrix_labels.length
      ? metrics.confusion_matrix_labels : LABELS;
    const rows = metrics.confusion_matrix || [];
    const table = h("table", { testid });
    table.append(h("tr", {}, h("th", { class: "axis" }, "true ↓ / predicted →"), labels.map((l) => h("th", {}, l))));
    rows.forEach((row, i) => {
      const total = row.reduce((a, b) => a + Number(b || 0), 0);
      table.append(h("tr", {}, h("th", { class: "row" }, labels[i] || `#${i}`), row.map((count, j) => {
        const share = total ? Number(count || 0) / total : 0;
        const cell = h("td", { class: i === j ? "diagonal" : "", title: `${count} of ${total} ${labels[i] || ""} (${pct(share)})` }, String(count));
        // Shading by the row's share: each true class reads on its own scale.
        cell.style.backgroundColor = i === j
          ? `rgba(39, 174, 96, ${(0.1 + 0.6 * share).toFixed(3)})`
          : `rgba(192, 57, 43, ${(0.6 * share).toFixed(3)})`;
        return cell;
      })));
    });
    return table;
  }

  function renderConfusion() {
    const box = clear($("confusion"));
    const source = $("confusion-source");
    const version = activeVersion();
    const model = state.models.find((m) => m.version === version);
    if (!model) {
      source.textContent = "";
      box.append(h("p", { class: "empty", testid: "confusion-empty" }, "No active model yet."));
      return;
    }
    const evaluation = latestEvaluation(version);
    const figures = [];
    if (evaluation && evaluation.test_metrics && evaluation.test_metrics.confusion_matrix) {
      figures.push(["test set", `evaluated ${when(evaluation.created_at)}`, evaluation.test_metrics, "confusion-test"]);
    } else if (model.test_metrics && model.test_metrics.confusion_matrix) {
      figures.push(["test set", "at training", model.test_metrics, "confusion-test"]);
    }
    if (evaluation && evaluation.feedback_metrics && evaluation.feedback_metrics.total_samples) {
      figures.push(["feedback", `evaluated ${when(evaluation.created_at)}`, evaluation.feedback_metrics, "confusion-feedback"]);
    }
    source.textContent = `active model ${version}`;
    if (!figures.length) {
      box.append(h("p", { class: "empty" }, `${version} carries no confusion matrix.`));
      return;
    }
    for (const [name, whenText, metrics, testid] of figures) {
      box.append(h("figure", {},
        h("figcaption", {}, `${name} (${whenText}): accuracy ${pct(metrics.accuracy)}, macro-F1 ${pct(metrics.macro_f1)}, n=${metrics.total_samples || 0}`),
        matrixTable(metrics, testid)));
    }
  }

  // ---------------------------------------------------------------- training

  const RUNNING = new Set(["InProgress", "Stopping"]);

  async function loadJobs() {
    try {
      const answer = await api("GET", "/model-init/jobs?page_size=50");
      state.jobs = answer.jobs || [];
      show("jobs-error", null);
    } catch (error) {
      show("jobs-error", error);
      return;
    }
    const running = state.jobs.filter((j) => RUNNING.has(j.status));
    const badge = $("training-badge");
    badge.textContent = String(running.length);
    badge.hidden = !running.length;
    // Newest first: the newest running jobs get the streams.
    for (const job of running) watchJob(job.job_name);
    renderJobs();
  }

  function renderJobs() {
    const registered = new Set(state.models.map((m) => m.training_job_name));
    if (!changed("jobs", state.jobs, Array.from(registered), Array.from(state.cards.keys()))) return;
    const body = clear($("jobs-body"));
    if (!state.jobs.length) {
      body.append(h("tr", {}, h("td", { colspan: 8, class: "empty-row" }, "No training job yet.")));
      return;
    }
    for (const job of state.jobs) {
      const p = job.progress || {};
      const metrics = job.metrics || {};
      const actions = [];
      if (job.status === "InProgress") {
        actions.push(h("button", { type: "button", class: "small", testid: `stop-${job.job_name}`,
          onclick: (e) => stopJob(job.job_name, e.currentTarget) }, "Stop"));
      }
      if (job.status === "Completed" && !job.auto_deploy && !registered.has(job.job_name)) {
        actions.push(h("button", { type: "button", class: "small", testid: `deploy-${job.job_name}`,
          onclick: (e) => deployJob(job.job_name, e.currentTarget) }, "Deploy"));
      }
      if (!state.cards.has(job.job_name) && !RUNNING.has(job.status)) {
        actions.push(h("button", { type: "button", class: "small", testid: `show-${job.job_name}`,
          onclick: () => watchJob(job.job_name, true) }, "Show"));
      }
      body.append(h("tr", { testid: "job-row", "data-job": job.job_name, "data-status": job.status },
        h("td", { class: "mono wrap" }, job.job_name),
        h("td", {}, chip(job.status, statusKind(job.status)),
          job.secondary_status && job.secondary_status !== job.status ? h("span", { class: "sub" }, job.secondary_status) : null,
          job.failure_reason ? h("span", { class: "reason", title: job.failure_reason }, job.failure_reason) : null),
        h("td", {}, job.preset || "—", h("span", { class: "sub" }, job.backend || "")),
        h("td", { class: "num" }, p.total_steps ? `${p.step} / ${p.total_steps}` : "—"),
        h("td", { class: "nowrap" }, when(job.creation_time)),
        h("td", { class: "nowrap" }, when(job.end_time)),
        h("td", { class: "num" }, metrics.test_accuracy !== undefined ? `acc ${pct(metrics.test_accuracy)}` : "—",
          metrics.test_macro_f1 !== undefined ? h("span", { class: "sub" }, `F1 ${pct(metrics.test_macro_f1)}`) : null),
        h("td", {}, actions)));
    }
  }

  async function stopJob(name, button) {
    await busy(button, async () => {
      try {
        const answer = await api("POST", `/model-init/stop/${encodeURIComponent(name)}`, {});
        show("jobs-msg", `${name}: ${answer.job ? answer.job.status : "stopping"}.`);
      } catch (error) {
        show("jobs-msg", error);
      }
    });
    refreshSoon();
  }

  async function deployJob(name, button) {
    show("jobs-msg", `Deploying ${name} …`, "info");
    await busy(button, async () => {
      try {
        const answer = await api("POST", `/model-init/deploy/${encodeURIComponent(name)}`, {});
        show("jobs-msg", answer.message || `${name} deployed as ${answer.model_version}.`);
      } catch (error) {
        show("jobs-msg", error);
      }
    });
    refreshSoon();
  }

  async function loadDatasets() {
    try {
      const answer = await api("GET", "/datasets");
      const select = $("bootstrap-dataset");
      const chosen = select.value;
      clear(select).append(h("option", { value: "" }, "built-in: Amazon review sentences"));
      for (const d of answer.datasets || []) {
        if (d.kind === "builtin") continue;
        select.append(h("option", { value: d.dataset_id }, `${d.name} (${d.dataset_id.slice(0, 12)})`));
      }
      select.value = chosen;
      if (select.value !== chosen) select.value = "";
      state.datasetsLoaded = true;
    } catch (error) {
      show("training-msg", error);
    }
  }

  async function bootstrap(event) {
    event.preventDefault();
    const button = event.submitter || $("bootstrap-form").querySelector("button[type=submit]");
    const request = {
      preset: $("bootstrap-preset").value,
      auto_deploy: $("bootstrap-deploy").checked,
    };
    if ($("bootstrap-dataset").value) request.dataset = $("bootstrap-dataset").value;
    await busy(button, async () => {
      try {
        const answer = await api("POST", "/model-init/bootstrap", request);
        show("training-msg", `${answer.message}.${answer.estimated_time ? ` Expected: ${answer.estimated_time}.` : ""}`);
        watchJob(answer.job_name, true);
      } catch (error) {
        show("training-msg", error);
      }
    });
    refreshSoon();
  }

  function lossChart(card) {
    if (card.chart || !chartsAvailable()) return card.chart;
    card.chart = makeChart(card.chartBox, {
      height: 170,
      legend: { live: false },
      scales: { x: { time: false, range: xRange(1, 0) } },
      axes: [{ label: "step", labelSize: 18, size: 32 }, { size: 52 }],
      series: [
        { label: "step" },
        { label: "loss", stroke: "#2f6fb3", width: 2, points: { show: true, size: 4 }, value: (u, v) => num(v) },
      ],
    }, [[], []]);
    return card.chart;
  }

  function jobCard(name) {
    let card = state.cards.get(name);
    if (card) return card;
    const status = h("span", { class: "chip", testid: "job-status" }, "connecting");
    const bar = h("progress", { testid: "job-progress", max: 1 });
    const progressText = h("span", { class: "sub", testid: "job-progress-text" }, "waiting for the first step");
    const log = h("div", { class: "log", testid: "job-log" });
    const chartBox = h("div", { class: "chart", testid: "loss-chart", "data-points": "0" });
    const result = h("div", { testid: "job-result" });
    const close = h("button", { type: "button", class: "small", title: "Hide this card" }, "×");
    const root = h("article", { class: "job-card", testid: "job-card", "data-job": name, "data-done": "false" },
      h("header", {}, h("span", { class: "name" }, name), status, h("span", { class: "spacer" }), close),
      bar, progressText, log, chartBox, result);
    card = { name, root, status, bar, progressText, log, chartBox, result, steps: [], losses: [], chart: null, done: false, frame: 0 };
    close.addEventListener("click", () => dropCard(name));
    state.cards.set(name, card);
    $("live-jobs").prepend(root);
    $("live-empty").hidden = true;
    // Keep the newest cards; finished ones go first.
    const names = Array.from(state.cards.keys());
    for (const old of names.slice(0, Math.max(0, names.length - MAX_JOB_CARDS))) {
      if (state.cards.get(old).done) dropCard(old);
    }
    return card;
  }

  function dropCard(name) {
    const card = state.cards.get(name);
    if (!card) return;
    const watcher = state.watchers.get(name);
    if (watcher) watcher.abort();
    if (card.chart) card.chart.release();
    card.root.remove();
    state.cards.delete(name);
    $("live-empty").hidden = state.cards.size > 0;
    renderJobs();
  }

  function redrawLoss(card) {
    if (card.frame) return;
    // Updates come in bursts (a line per step): draw once per frame.
    card.frame = requestAnimationFrame(() => {
      card.frame = 0;
      const chart = lossChart(card);
      if (chart) chart.setData([card.steps.slice(), card.losses.slice()]);
    });
  }

  function updateCard(card, update) {
    const job = update.job || {};
    const p = job.progress || {};
    card.root.dataset.status = job.status || "";
    card.status.className = `chip ${statusKind(job.status)}`;
    card.status.textContent = [job.status, job.secondary_status].filter((s, i, all) => s && all.indexOf(s) === i).join(" · ") || "—";
    if (p.total_steps) {
      card.bar.max = p.total_steps;
      card.bar.value = p.step || 0;
      card.progressText.textContent = `step ${p.step || 0} / ${p.total_steps} · epoch ${num(p.epoch, 2)} · loss ${num(p.loss)}`;
    }
    if (p.step && p.step > (card.steps.length ? card.steps[card.steps.length - 1] : 0) && typeof p.loss === "number") {
      card.steps.push(p.step);
      card.losses.push(p.loss);
      card.chartBox.dataset.points = String(card.steps.length);
      redrawLoss(card);
    }
    if (update.message) card.log.textContent = `${when(update.time)}  ${update.message}`;
    if (update.done) finishCard(card, job, update.test_metrics);
  }

  function finishCard(card, job, metrics) {
    card.done = true;
    card.root.dataset.done = "true";
    if (card.steps.length === 0) card.chartBox.hidden = true;
    const result = clear(card.result);
    if (job.status === "Failed" || job.failure_reason) {
      result.append(h("div", { class: "msg error", testid: "job-failure" }, `The job ${String(job.status || "").toLowerCase()}: ${job.failure_reason || "no reason given"}`));
    }
    if (metrics && metrics.total_samples) {
      const perClass = h("table", { class: "per-class" },
        h("tr", {}, h("th", {}, "class"), h("th", {}, "precision"), h("th", {}, "recall"), h("th", {}, "F1"), h("th", {}, "support")),
        (metrics.per_class || []).map((c) => h("tr", {}, h("td", {}, c.label), h("td", { class: "num" }, pct(c.precision)),
          h("td", { class: "num" }, pct(c.recall)), h("td", { class: "num" }, pct(c.f1)), h("td", { class: "num" }, String(c.support)))));
      result.append(h("div", { testid: "job-test-metrics", class: "job-metrics" },
        h("div", { class: "metrics-line" },
          h("span", {}, "test accuracy ", h("strong", { testid: "job-test-accuracy" }, pct(metrics.accuracy))),
          h("span", {}, "macro-F1 ", h("strong", { testid: "job-test-macro-f1" }, pct(metrics.macro_f1))),
          h("span", { class: "sub" }, `${metrics.total_samples} test sentences`)),
        perClass));
    } else if (job.status === "Completed") {
      result.append(h("p", { class: "empty" }, "Completed; the job reported no test metrics."));
    }
  }

  // Follows one job's status stream; `force` also opens finished jobs (their final state).
  function watchJob(name, force) {
    if (state.watchers.has(name)) return;
    const card = state.cards.get(name);
    if (card && card.done) return;
    if (!force && state.watchers.size >= MAX_WATCHES) return;
    const controller = new AbortController();
    state.watchers.set(name, controller);
    const live = jobCard(name);
    stream(`/model-init/watch/${encodeURIComponent(name)}`, (update) => updateCard(live, update), controller.signal)
      .catch((error) => {
        if (error && error.name === "AbortError") return;
        live.log.textContent = describe(error).text;
      })
      .finally(() => {
        state.watchers.delete(name);
        // A stream cut short reopens on the next poll while the job runs.
        if (live.done) refreshSoon();
      });
  }

  // ---------------------------------------------------------------- predict and feedback

  async function predict(event) {
    event.preventDefault();
    const text = $("predict-text").value.trim();
    if (!text) return;
    const button = event.submitter || $("predict-form").querySelector("button[type=submit]");
    await busy(button, async () => {
      try {
        const answer = await api("POST", "/predict", { text });
        show("predict-msg", null);
        state.prediction = answer;
        renderPrediction(answer);
      } catch (error) {
        $("predict-result").hidden = true;
        show("predict-msg", error);
      }
    });
  }

  function renderPrediction(p) {
    const box = clear($("predict-result"));
    box.dataset.predictionId = p.prediction_id;
    const labels = Array.from(new Set([...LABELS, ...Object.keys(p.scores || {})]));
    const scores = h("div", { class: "scores", testid: "predict-scores" });
    for (const label of labels) {
      const value = (p.scores || {})[label] || 0;
      const fill = h("span");
      fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
      scores.append(h("span", {}, label), h("div", { class: `bar ${label}` }, fill),
        h("span", { class: "num", testid: `predict-score-${label}` }, pct(value)));
    }
    const buttons = h("div", { class: "feedback-buttons", testid: "feedback-buttons" },
      h("span", {}, "Was it right?"),
      h("button", { type: "button", class: "primary", testid: "feedback-confirm",
        onclick: (e) => giveFeedback(p, p.label, e.currentTarget) }, `Yes, ${p.label}`),
      labels.filter((l) => l !== p.label).map((l) => h("button", { type: "button", testid: `feedback-correct-${l}`,
        onclick: (e) => giveFeedback(p, l, e.currentTarget) }, `No, ${l}`)));
    box.append(
      h("div", { class: "verdict" },
        h("span", { class: `label-chip ${p.label}`, testid: "predict-label" }, p.label),
        h("span", {}, "confidence ", h("strong", { testid: "predict-confidence" }, pct(p.confidence))),
        h("span", { class: "sub" }, "model ", h("strong", { testid: "predict-version" }, p.model_version))),
      scores,
      h("div", { class: "sub" }, "prediction ", h("span", { class: "mono", testid: "predict-id" }, p.prediction_id)),
      buttons,
      h("div", { class: "msg", id: "feedback-msg", testid: "feedback-msg", role: "status", hidden: true }));
    box.hidden = false;
  }

  async function giveFeedback(p, label, button) {
    const group = button.parentElement;
    for (const b of group.querySelectorAll("button")) b.disabled = true;
    try {
      const answer = await api("POST", "/feedback", {
        prediction_id: p.prediction_id,
        user_label: label,
        // A double click or a retry stores the answer once.
        idempotency_key: `console:${p.prediction_id}:${label}`,
      });
      const record = answer.feedback || {};
      const verdict = label === p.label ? `confirmed ${label}` : `corrected to ${label} (the model said ${p.label})`;
      show("feedback-msg", `Feedback #${record.id || answer.id} recorded: ${verdict}${answer.duplicate ? " (already recorded)" : ""}.`);
      $("feedback-msg").dataset.feedbackId = String(record.id || answer.id || "");
      $("feedback-msg").dataset.label = label;
      refreshSoon();
    } catch (error) {
      show("feedback-msg", error);
      for (const b of group.querySelectorAll("button")) b.disabled = false;
    }
  }

  function facts(entries) {
    return h("dl", { class: "facts" }, entries.filter(Boolean).map(([term, value, testid]) =>
      [h("dt", {}, term), h("dd", { testid }, value)]));
  }

  async function loadStats() {
    const box = $("feedback-stats");
    try {
      const s = await api("GET", "/feedback/stats");
      show("stats-error", null);
      const byLabel = s.by_label || {};
      const total = s.total || 0;
      const bars = h("div", { class: "scores" }, LABELS.map((l) => {
        const fill = h("span");
        fill.style.width = `${total ? ((byLabel[l] || 0) / total) * 100 : 0}%`;
        return [h("span", {}, l), h("div", { class: `bar ${l}` }, fill), h("span", { class: "num", testid: `stats-${l}` }, String(byLabel[l] || 0))];
      }));
      const rate = s.with_model_prediction ? ` (${pct((s.disagreements || 0) / s.with_model_prediction)} of ${s.with_model_prediction} with a prediction)` : "";
      clear(box).append(
        facts([
          ["labels", String(total), "stats-total"],
          ["disagreements", `${s.disagreements || 0}${rate}`, "stats-disagreements"],
          ["latest", s.latest_time ? `#${s.latest_id} at ${when(s.latest_time)}` : "none yet", "stats-latest"],
        ]),
        bars);
    } catch (error) {
      show("stats-error", error);
      if (!box.childElementCount) box.append(h("p", { class: "empty" }, "Statistics unavailable."));
    }
  }

  async function loadPolicy() {
    const box = $("policy");
    try {
      const p = await api("GET", "/retrain/policy");
      show("policy-error", null);
      const remaining = Math.max(0, (p.min_new_feedback || 0) - (p.new_feedback_since_last_run || 0));
      clear(box).append(
        h("div", { class: "metrics-line" }, chip(p.state || "unknown", statusKind(p.state), "policy-state"),
          h("span", { class: "sub", testid: "policy-reason" }, p.reason || "")),
        facts([
          ["automatic", p.enabled ? "on" : "off (SENTILOOP_RETRAIN_AUTO)", "policy-enabled"],
          ["new labels", `${p.new_feedback_since_last_run || 0} since the last run`, "policy-new"],
          ["until the next run", p.enabled ? `${remaining} more label${remaining === 1 ? "" : "s"} (threshold ${p.min_new_feedback})` : `threshold ${p.min_new_feedback} labels`, "policy-remaining"],
          ["cooldown", `${p.cooldown_seconds || 0} s between automatic runs`, "policy-cooldown"],
          ["on drift", `${!p.enabled ? "nothing (automatic retraining is off)" : p.retrain_on_drift ? "a run without waiting for the count" : "nothing (SENTILOOP_RETRAIN_ON_DRIFT)"}; drift: ${p.drift_state ? p.drift_state.replace(/_/g, " ") : "unknown"}`, "policy-drift"],
          ["settling", `${p.quiet_seconds || 0} s quiet, at most ${p.max_wait_seconds || 0} s`, null],
          ["next run", p.next_run_time ? `${when(p.next_run_time)}${p.next_run_trigger === "drift" ? " (triggered by drift)" : ""}` : "—", "policy-next"],
          ["running job", p.running_job_name || "none", "policy-running"],
        ]));
    } catch (error) {
      show("policy-error", error);
      if (!box.childElementCount) box.append(h("p", { class: "empty" }, "Policy unavailable."));
    }
  }

  async function retrainNow() {
    await busy($("retrain"), async () => {
      try {
        const answer = await api("POST", "/retrain", { return_immediately: true });
        show("retrain-msg", `${answer.message}${answer.training_job_name ? ` Follow it under Training.` : ""}`);
      } catch (error) {
        show("retrain-msg", error);
      }
    });
    refreshSoon();
  }

  // ---------------------------------------------------------------- labelling queue

  const QUEUE_SIZE = 20;

  async function loadLabelQueue() {
    try {
      const q = await api("GET", `/feedback/requests?page_size=${QUEUE_SIZE}`);
      show("label-error", null);
      renderLabelQueue(q);
    } catch (error) {
      show("label-error", error);
    }
  }

  function renderLabelQueue(q) {
    const listed = q.requests || [];
    // An answered request the server no longer lists needs no hiding any more.
    const ids = new Set(listed.map((r) => r.prediction_id));
    for (const id of state.answered) if (!ids.has(id)) state.answered.delete(id);
    const requests = listed.filter((r) => !state.answered.has(r.prediction_id));
    const audits = requests.filter((r) => r.audit).length;
    $("label-summary").textContent =
      `${requests.length} to label (${audits} audit) · ${q.unlabelled || 0} of the last ` +
      `${q.window || 0} predictions unlabelled · ranked by ${q.strategy || "margin"}`;
    $("label-empty").hidden = requests.length > 0;
    if (!changed("label-queue", requests)) return;
    const list = clear($("label-queue"));
    for (const r of requests) list.append(labelItem(r));
  }

  function labelItem(r) {
    return h("li", { class: "label-item", testid: "label-item", "data-prediction-id": r.prediction_id,
      "data-audit": r.audit ? "true" : "false" },
      h("div", { class: "meta" },
        r.audit ? h("span", { class: "chip audit", testid: "label-audit",
          title: "Drawn at random from the recent predictions, not for its uncertainty" }, "audit") : null,
        h("span", {}, "model said ", h("span", { class: `label-chip ${r.label}`, testid: "label-predicted" }, r.label)),
        h("span", {}, "confidence ", h("strong", { testid: "label-confidence" }, pct(r.confidence))),
        h("span", {}, "uncertainty ", h("strong", { testid: "label-uncertainty" }, num(r.uncertainty, 3))),
        r.duplicates ? h("span", { testid: "label-duplicates" }, `+${r.duplicates} like it`) : null,
        h("span", {}, `${r.model_version} · ${when(r.created_at)}`)),
      h("div", { class: "body" },
        h("div", { class: "text", testid: "label-text" }, r.text),
        h("div", { class: "feedback-buttons" }, LABELS.map((l) => h("button", { type: "button", class: l,
          testid: `label-${l}`, title: `POST /feedback: the right label is ${l}`,
          onclick: (e) => answerRequest(r, l, e.currentTarget) }, l)))));
  }

  async function answerRequest(r, label, button) {
    const item = button.closest("li");
    for (const b of item.querySelectorAll("button")) b.disabled = true;
    try {
      const answer = await api("POST", "/feedback", {
        prediction_id: r.prediction_id,
        user_label: label,
        idempotency_key: `console:${r.prediction_id}:${label}`,
      });
      const record = answer.feedback || {};
      state.answered.add(r.prediction_id);
      item.remove();
      $("label-empty").hidden = $("label-queue").childElementCount > 0;
      show("label-msg", `Feedback #${record.id || answer.id} recorded: ${label}` +
        `${record.audit ? " (an audit sample)" : ""}${answer.duplicate ? " (already recorded)" : ""}.`);
      $("label-msg").dataset.feedbackId = String(record.id || answer.id || "");
      $("label-msg").dataset.predictionId = r.prediction_id;
      refreshSoon();
    } catch (error) {
      show("label-msg", error);
      for (const b of item.querySelectorAll("button")) b.disabled = false;
    }
  }

  // ---------------------------------------------------------------- events

  function eventRow(e, fresh) {
    const attributes = Object.entries(e.attributes || {})
      .filter(([, v]) => v !== "" && v !== null)
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
      .join("  ");
    return h("tr", { class: fresh ? "fresh" : "", testid: "event-row", "data-id": e.id, "data-type": e.type },
      h("td", { class: "num" }, e.id),
      h("td", { class: "nowrap" }, when(e.created_at)),
      h("td", {}, chip(e.type, e.type && /failed|rejected|rolled_back/.test(e.type) ? "bad" : "info")),
      h("td", { class: "mono wrap" }, e.subject || ""),
      h("td", { class: "wrap" }, e.message || ""),
      h("td", { class: "wrap attrs" }, attributes));
  }

  function applyEventFilter() {
    const prefix = $("events-filter").value.trim();
    let shown = 0;
    for (const row of $("events-body").rows) {
      row.hidden = !!prefix && !String(row.dataset.type || "").startsWith(prefix);
      if (!row.hidden) shown += 1;
    }
    $("events-empty").hidden = shown > 0;
    $("events-empty").textContent = prefix ? `No event whose type starts with “${prefix}”.` : "No events yet.";
  }

  // Events arrive oldest first; the table shows newest first.
  function ingest(events, fresh) {
    const body = $("events-body");
    let changed = false;
    for (const e of events) {
      if (state.eventIds.has(e.id)) continue;
      state.eventIds.add(e.id);
      if (state.lastEventId === null || Number(e.id) > Number(state.lastEventId)) state.lastEventId = e.id;
      body.prepend(eventRow(e, fresh));
      changed = true;
      if (fresh && /^(model|serving|training|retraining|shadow)\./.test(e.type || "")) refreshSoon();
    }
    while (body.rows.length > MAX_EVENTS) {
      state.eventIds.delete(body.rows[body.rows.length - 1].dataset.id);
      body.deleteRow(body.rows.length - 1);
    }
    if (changed || !body.rows.length) applyEventFilter();
  }

  function setLive(text, kind) {
    const badge = $("events-live");
    badge.textContent = text;
    badge.className = `chip ${kind || ""}`.trim();
    badge.dataset.state = text;
    $("events-dot").classList.toggle("live", kind === "ok");
  }

  const pause = (ms, signal) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

  async function followEvents() {
    if (state.eventsAbort) state.eventsAbort.abort();
    const controller = new AbortController();
    state.eventsAbort = controller;
    let delay = 1000;
    while (!controller.signal.aborted) {
      try {
        if (state.lastEventId === null) {
          setLive("loading");
          const listed = await api("GET", "/events?page_size=100");
          ingest((listed.events || []).slice().reverse(), false);
          applyEventFilter();
        }
        setLive("connecting");
        // -1 replays everything after an empty list: nothing published in between is lost.
        const after = state.lastEventId === null ? "-1" : state.lastEventId;
        await stream(`/events/stream?after_id=${encodeURIComponent(after)}`, (message) => {
          if (message.event) ingest([message.event], true);
        }, controller.signal, () => {
          setLive("live", "ok");
          show("events-error", null);
          delay = 1000;
        });
      } catch (error) {
        if (controller.signal.aborted) return;
        show("events-error", error);
      }
      if (controller.signal.aborted) return;
      setLive(`reconnecting in ${Math.round(delay / 1000)} s`, "warn");
      await pause(delay, controller.signal);
      delay = Math.min(delay * 2, 15000);
    }
  }

  // ---------------------------------------------------------------- views and polling

  function currentView() {
    const wanted = location.hash.replace(/^#/, "");
    return VIEWS.includes(wanted) ? wanted : "models";
  }

  function showView() {
    state.view = currentView();
    for (const view of VIEWS) $(`view-${view}`).hidden = view !== state.view;
    for (const tab of document.querySelectorAll(".tabs a[data-view]")) {
      if (tab.dataset.view === state.view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    document.body.dataset.view = state.view;
    refreshSoon();
  }

  let timer = 0;
  let running = false;
  let again = false;

  async function refresh() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    try {
      if (!document.hidden) {
        const tasks = [loadServing(), loadHealth(), loadDrift(), loadJobs()];
        if (state.view === "models") tasks.push(loadModels(), loadActivations(), loadEvaluations(), loadShadow());
        if (state.view === "training") {
          tasks.push(loadModels());
          if (!state.datasetsLoaded) tasks.push(loadDatasets());
        }
        if (state.view === "predict") tasks.push(loadStats(), loadPolicy());
        if (state.view === "label") tasks.push(loadLabelQueue());
        await Promise.allSettled(tasks);
        document.body.dataset.refreshed = String(Date.now());
      }
    } finally {
      running = false;
      if (again) {
        again = false;
        refresh();
      } else {
        timer = setTimeout(refresh, POLL_MS);
      }
    }
  }

  let soon = 0;
  function refreshSoon() {
    // Coalesces the refreshes a burst of events or clicks asks for.
    if (soon) return;
    soon = setTimeout(() => {
      soon = 0;
      refresh();
    }, 50);
  }

  // ---------------------------------------------------------------- the token

  function renderTokenState() {
    const token = readToken();
    $("token-state").textContent = token ? "token set" : "read-only";
    $("token-state").title = token
      ? "Sent with every call from this tab (sessionStorage); Forget removes it."
      : "Predictions, feedback and listings need no token; operator actions do.";
    document.body.dataset.token = token ? "set" : "none";
  }

  function saveToken(event) {
    event.preventDefault();
    writeToken($("operator-token").value.trim());
    renderTokenState();
    for (const id of ["models-msg", "shadow-msg", "training-msg", "jobs-msg", "retrain-msg"]) show(id, null);
    followEvents();
    refreshSoon();
  }

  function forgetToken() {
    writeToken("");
    $("operator-token").value = "";
    renderTokenState();
    followEvents();
    refreshSoon();
  }

  // ---------------------------------------------------------------- start

  function start() {
    $("operator-token").value = readToken();
    renderTokenState();
    $("token-form").addEventListener("submit", saveToken);
    $("token-forget").addEventListener("click", forgetToken);
    $("rollback").addEventListener("click", rollback);
    $("shadow-stop").addEventListener("click", stopShadow);
    $("evaluate").addEventListener("click", evaluateNow);
    $("eval-version").addEventListener("change", (e) => {
      state.evalVersion = e.target.value;
      renderEvalChart();
    });
    $("bootstrap-form").addEventListener("submit", bootstrap);
    $("predict-form").addEventListener("submit", predict);
    $("predict-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("predict-form").requestSubmit();
    });
    $("retrain").addEventListener("click", retrainNow);
    $("events-filter").addEventListener("input", applyEventFilter);
    window.addEventListener("hashchange", showView);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshSoon();
    });
    showView();
    followEvents();
    document.body.dataset.ready = "true";
  }

  start();
})();
