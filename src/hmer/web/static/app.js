// hmer web page: draw or upload handwritten math, see its LaTeX and rendering as you write.
// Plain browser JavaScript, no build step. Talks to POST /v1/recognize on the same server.
"use strict";

(() => {
  const DEBOUNCE_MS = 400;
  const MAX_UPLOAD = 10 * 1024 * 1024;

  const $ = (id) => document.getElementById(id);
  const canvas = $("pad");
  const ctx = canvas.getContext("2d");
  const drop = $("drop");
  const hint = $("hint");
  const latexBox = $("latex");
  const render = $("render");
  const statusLine = $("status");
  const altsList = $("alts");
  const altsTitle = $("alts-title");
  const busy = $("busy");
  const modelSelect = $("model");

  let strokes = []; // each stroke: array of [x, y, t] in CSS pixels and milliseconds
  let current = null; // the stroke being drawn
  let activePointer = null;
  let timeOrigin = null;
  let picture = null; // {bitmap, name} of an uploaded image shown on the pad
  let timer = null;
  let sequence = 0; // answers to superseded requests are ignored
  let inFlight = null;

  // -- drawing -------------------------------------------------------------------------------
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const box = canvas.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(box.width * dpr));
    canvas.height = Math.max(1, Math.round(box.height * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    redraw();
  }

  function styleInk() {
    ctx.strokeStyle = "#1b2330";
    ctx.fillStyle = "#1b2330";
    ctx.lineWidth = 3;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
  }

  function drawStroke(s) {
    if (s.length === 1) {
      ctx.beginPath();
      ctx.arc(s[0][0], s[0][1], 1.5, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(s[0][0], s[0][1]);
    for (let i = 1; i < s.length; i++) ctx.lineTo(s[i][0], s[i][1]);
    ctx.stroke();
  }

  function redraw() {
    const box = canvas.getBoundingClientRect();
    ctx.clearRect(0, 0, box.width, box.height);
    if (picture) {
      const b = picture.bitmap;
      const scale = Math.min(1, (box.width - 16) / b.width, (box.height - 16) / b.height);
      const w = b.width * scale;
      const h = b.height * scale;
      ctx.drawImage(b, (box.width - w) / 2, (box.height - h) / 2, w, h);
    }
    styleInk();
    strokes.forEach(drawStroke);
    hint.hidden = strokes.length > 0 || picture !== null;
    $("undo").disabled = strokes.length === 0;
  }

  function pointOf(e) {
    const box = canvas.getBoundingClientRect();
    const x = Math.round((e.clientX - box.left) * 10) / 10;
    const y = Math.round((e.clientY - box.top) * 10) / 10;
    return [x, y, Math.round(e.timeStamp - timeOrigin)];
  }

  canvas.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    if (current) return; // one pointer draws at a time
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    if (picture) { // writing replaces an uploaded image
      picture = null;
      strokes = [];
    }
    if (strokes.length === 0) timeOrigin = e.timeStamp;
    clearTimeout(timer);
    activePointer = e.pointerId;
    current = [pointOf(e)];
    strokes.push(current);
    redraw();
  });

  canvas.addEventListener("pointermove", (e) => {
    if (!current || e.pointerId !== activePointer) return;
    e.preventDefault();
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    const last = current[current.length - 1];
    styleInk();
    ctx.beginPath();
    ctx.moveTo(last[0], last[1]);
    for (const ev of events.length ? events : [e]) {
      const p = pointOf(ev);
      const prev = current[current.length - 1];
      if (p[0] === prev[0] && p[1] === prev[1]) continue;
      current.push(p);
      ctx.lineTo(p[0], p[1]);
    }
    ctx.stroke();
  });

  function endStroke(e) {
    if (!current || e.pointerId !== activePointer) return;
    current = null;
    activePointer = null;
    redraw();
    schedule();
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(recognizeStrokes, DEBOUNCE_MS);
  }

  function undo() {
    if (current || strokes.length === 0) return;
    strokes.pop();
    redraw();
    if (strokes.length) schedule();
    else clearAll();
  }

  function clearAll() {
    clearTimeout(timer);
    sequence++; // drop any answer still on its way
    if (inFlight) inFlight.abort();
    strokes = [];
    current = null;
    picture = null;
    redraw();
    showBusy(false);
    clearOutput();
    setStatus("");
  }

  function clearOutput() {
    latexBox.value = "";
    renderLatex();
    showAlternatives([]);
  }

  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearAll);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z" && e.target !== latexBox) {
      e.preventDefault();
      undo();
    }
  });

  // -- images: upload, drag and drop, paste -----------------------------------------------
  async function useImage(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      setStatus(`${file.name || "file"} is not an image`, true);
      return;
    }
    if (file.size > MAX_UPLOAD) {
      setStatus(`image larger than ${MAX_UPLOAD / 1048576} MB`, true);
      return;
    }
    clearTimeout(timer);
    strokes = [];
    try {
      picture = { bitmap: await createImageBitmap(file), name: file.name };
    } catch (err) {
      picture = null; // the server still tries and explains what is wrong
    }
    redraw();
    const form = new FormData();
    form.append("file", file, file.name || "pasted.png");
    send(form, null);
  }

  $("file").addEventListener("change", (e) => {
    useImage(e.target.files[0]);
    e.target.value = ""; // the same file may be chosen again
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useImage(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const items = e.clipboardData ? Array.from(e.clipboardData.items) : [];
    const item = items.find((it) => it.kind === "file" && it.type.startsWith("image/"));
    if (!item) return; // ordinary text paste, e.g. into the LaTeX box
    e.preventDefault();
    useImage(item.getAsFile());
  });

  // -- talking to the server -------------------------------------------------------------
  function recognizeStrokes() {
    if (strokes.length === 0 || current) return;
    const body = JSON.stringify({ strokes });
    send(body, { "content-type": "application/json" });
  }

  async function send(body, headers) {
    const mine = ++sequence;
    if (inFlight) inFlight.abort();
    inFlight = new AbortController();
    const model = modelSelect.value;
    const url = "/v1/recognize" + (model ? `?model=${encodeURIComponent(model)}` : "");
    showBusy(true);
    try {
      const resp = await fetch(url, {
        method: "POST", body, headers: headers || {}, signal: inFlight.signal,
      });
      let data = null;
      try { data = await resp.json(); } catch (err) { data = null; }
      if (mine !== sequence) return;
      if (!resp.ok) {
        const detail = data && data.detail ? data.detail : `HTTP ${resp.status}`;
        if ([413, 415, 422].includes(resp.status)) clearOutput(); // the input itself was refused
        setStatus(`Could not read it: ${detail}`, true);
        return;
      }
      showResult(data);
    } catch (err) {
      if (err.name !== "AbortError" && mine === sequence) {
        setStatus("The server did not answer; is it still running?", true);
      }
    } finally {
      if (mine === sequence) showBusy(false);
    }
  }

  function showBusy(on) {
    busy.hidden = !on;
    document.body.classList.toggle("waiting", on);
  }

  function showResult(r) {
    latexBox.value = r.latex;
    renderLatex();
    showAlternatives(r.alternatives || [], r.latex);
    const ms = (v) => `${Math.round(v)} ms`;
    setStatus(`${r.latex ? "" : "Nothing recognized · "}model ${r.model} · ` +
      `${ms(r.time_ms)} decoding, ${ms(r.total_ms)} on the server`);
    statusLine.dataset.timeMs = String(r.time_ms);
  }

  function setStatus(text, isError = false) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", isError);
  }

  // -- LaTeX output ----------------------------------------------------------------------
  function renderLatex() {
    const tex = latexBox.value.trim();
    if (!tex) {
      render.innerHTML = '<span class="placeholder">The rendering appears here.</span>';
      return;
    }
    if (!window.katex) {
      render.textContent = tex;
      return;
    }
    window.katex.render(tex, render, { displayMode: true, throwOnError: false, strict: "ignore" });
  }

  function showAlternatives(alts, chosen) {
    altsList.replaceChildren();
    altsTitle.hidden = alts.length < 2;
    if (alts.length < 2) return;
    for (const a of alts) {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.title = a.latex;
      btn.classList.toggle("chosen", a.latex === chosen);
      const math = document.createElement("span");
      if (window.katex && a.latex) {
        window.katex.render(a.latex, math, { throwOnError: false, strict: "ignore" });
      } else {
        math.textContent = a.latex || "(empty)";
      }
      const conf = document.createElement("span");
      conf.className = "conf";
      conf.textContent = `${Math.round(a.score * 100)}%`;
      btn.append(math, conf);
      btn.addEventListener("click", () => {
        latexBox.value = a.latex;
        renderLatex();
        for (const other of altsList.querySelectorAll("button")) other.classList.remove("chosen");
        btn.classList.add("chosen");
      });
      li.append(btn);
      altsList.append(li);
    }
  }

  latexBox.addEventListener("input", renderLatex);

  $("copy").addEventListener("click", async () => {
    const text = latexBox.value;
    try {
      await navigator.clipboard.writeText(text);
    } catch (err) { // older browsers, or no permission
      latexBox.select();
      document.execCommand("copy");
    }
    const btn = $("copy");
    btn.textContent = "Copied";
    setTimeout(() => { btn.textContent = "Copy"; }, 1200);
  });

  // -- models --------------------------------------------------------------------------------
  async function loadModels() {
    try {
      const resp = await fetch("/v1/models");
      const data = await resp.json();
      if (!data.models || data.models.length < 2) return;
      for (const m of data.models) {
        const opt = document.createElement("option");
        opt.value = m.name;
        opt.textContent = `${m.name} (${m.input_kind})`;
        modelSelect.append(opt);
      }
      $("model-box").hidden = false;
    } catch (err) {
      // the page works without the list: the server picks the model
    }
  }
  modelSelect.addEventListener("change", () => {
    if (strokes.length) schedule();
  });

  window.addEventListener("resize", resize);
  resize();
  renderLatex();
  loadModels();
})();
