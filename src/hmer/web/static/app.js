// hmer web page: draw or upload handwritten math, see its LaTeX and rendering as you write.
// Plain browser JavaScript, no build step. Talks to POST /v1/recognize on the same server, and
// to POST /v1/symbol in "which symbol is this?" mode.
"use strict";

(() => {
  const DEBOUNCE_MS = 400;
  const MAX_UPLOAD = 10 * 1024 * 1024;
  const MARGIN = 12; // CSS px kept free around the ink when it is fitted to a smaller pad
  const ERASER_PX = 10; // how close the eraser must come to a stroke
  const HISTORY_KEY = "hmer.history.v1";
  const HISTORY_MAX = 30;
  const ROUTE_KEY = "hmer.route.v1"; // the reader of drawings the user chose, in this browser
  // What each route of the API (GET /v1/models: routes) is called here.
  const ROUTE_NAMES = { image: "image model", strokes: "stroke model", fusion: "both (fusion)" };

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
  const routeSelect = $("route");
  const historyList = $("history");

  // Strokes are kept in ink coordinates, independent of the canvas: a view (scale and offset)
  // maps them to the canvas, and is refitted whenever the canvas changes size, so that a smaller
  // window or a rotated phone shows all of the ink that is sent, never a cut-off part of it.
  let strokes = []; // each stroke: array of [x, y, t] in ink units and milliseconds
  let view = { s: 1, ox: 0, oy: 0 }; // canvas CSS px = ink * s + o
  let size = { w: 0, h: 0 }; // canvas CSS size
  let current = null; // the stroke being drawn
  let activePointer = null;
  let gesture = null; // "draw", "erase" or "crop" while a pointer is down
  let erased = []; // strokes removed by the eraser gesture going on: [{index, stroke}]
  let cropBox = null; // [x0, y0, x1, y1] in canvas px while a crop is dragged
  let tool = "pen";
  let cropping = false;
  let timeOrigin = null;
  let picture = null; // {bitmap, file, place: {x, y, w, h}} of an uploaded image on the pad
  let undoStack = []; // actions: {type: "add", stroke} | {type: "erase", items} | {type: "clear", strokes}
  let redoStack = [];
  let timer = null;
  let sequence = 0; // answers to superseded requests are ignored
  let inFlight = null;
  let shown = ""; // the LaTeX the page last put in the box; anything else there is the user's edit
  let historyId = null; // the history entry this drawing or image updates
  let symbolMode = false; // the drawing is one symbol: show the classifier's top candidates
  let routes = {}; // route -> the model name that answers on it (GET /v1/models), when loaded

  // -- view ------------------------------------------------------------------------------------
  const toCanvas = (p) => [p[0] * view.s + view.ox, p[1] * view.s + view.oy];
  const toInk = (x, y) => [(x - view.ox) / view.s, (y - view.oy) / view.s];

  function inkBox() {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const s of strokes) {
      for (const p of s) {
        x0 = Math.min(x0, p[0]); y0 = Math.min(y0, p[1]);
        x1 = Math.max(x1, p[0]); y1 = Math.max(y1, p[1]);
      }
    }
    return x0 <= x1 ? { x0, y0, x1, y1 } : null;
  }

  function fitView() {
    // Ink that fits where it was drawn stays there, at its size; ink that no longer fits (a
    // smaller pad, or a stroke that ran off the edge) is shrunk and centred with a margin.
    // Growing the pad back restores the drawing as it was drawn.
    const b = inkBox();
    const inside = (v) => b.x0 * v.s + v.ox >= 0 && b.y0 * v.s + v.oy >= 0 &&
      b.x1 * v.s + v.ox <= size.w && b.y1 * v.s + v.oy <= size.h;
    const identity = { s: 1, ox: 0, oy: 0 };
    if (!b || inside(identity)) {
      view = identity;
      return;
    }
    if (inside(view)) return; // no jumps while the ink is all in sight
    const bw = Math.max(b.x1 - b.x0, 1);
    const bh = Math.max(b.y1 - b.y0, 1);
    const s = Math.max(0.05, Math.min(1, (size.w - 2 * MARGIN) / bw, (size.h - 2 * MARGIN) / bh));
    view = { s, ox: size.w / 2 - s * (b.x0 + b.x1) / 2, oy: size.h / 2 - s * (b.y0 + b.y1) / 2 };
  }

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const box = canvas.getBoundingClientRect();
    if (box.width === size.w && box.height === size.h && canvas.width === Math.round(box.width * dpr)) {
      return;
    }
    size = { w: box.width, h: box.height };
    canvas.width = Math.max(1, Math.round(box.width * dpr));
    canvas.height = Math.max(1, Math.round(box.height * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (!current) fitView(); // never move the ink under a pen that is still writing
    redraw();
  }

  // -- drawing -------------------------------------------------------------------------------
  function styleInk() {
    ctx.strokeStyle = "#1b2330";
    ctx.fillStyle = "#1b2330";
    ctx.lineWidth = 3;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.setLineDash([]);
  }

  function drawStroke(s) {
    const first = toCanvas(s[0]);
    ctx.beginPath();
    if (s.length === 1) {
      ctx.arc(first[0], first[1], 1.5, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.moveTo(first[0], first[1]);
    for (let i = 1; i < s.length; i++) ctx.lineTo(...toCanvas(s[i]));
    ctx.stroke();
  }

  function redraw() {
    ctx.clearRect(0, 0, size.w, size.h);
    if (picture) {
      const b = picture.bitmap;
      const scale = Math.min(1, (size.w - 16) / b.width, (size.h - 16) / b.height);
      const w = b.width * scale;
      const h = b.height * scale;
      picture.place = { x: (size.w - w) / 2, y: (size.h - h) / 2, w, h };
      ctx.drawImage(b, picture.place.x, picture.place.y, w, h);
    }
    styleInk();
    strokes.forEach(drawStroke);
    if (cropBox) {
      ctx.strokeStyle = "#2457c5";
      ctx.lineWidth = 2;
      ctx.setLineDash([6, 4]);
      const [x0, y0, x1, y1] = cropBox;
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    }
    hint.hidden = strokes.length > 0 || picture !== null;
    updateButtons();
  }

  function updateButtons() {
    $("undo").disabled = undoStack.length === 0;
    $("redo").disabled = redoStack.length === 0;
    $("crop").hidden = !picture || !picture.file;
    $("crop").setAttribute("aria-pressed", String(cropping));
    $("recognize").disabled = strokes.length === 0 && !(picture && picture.file);
    for (const b of [$("pen"), $("eraser")]) {
      b.setAttribute("aria-pressed", String(b.id === tool && !cropping));
    }
    document.body.classList.toggle("erasing", tool === "eraser");
    document.body.classList.toggle("cropping", cropping);
  }

  function canvasPoint(e) {
    const box = canvas.getBoundingClientRect();
    return [e.clientX - box.left, e.clientY - box.top];
  }

  function inkPoint(e) {
    const [x, y] = toInk(...canvasPoint(e));
    return [Math.round(x * 10) / 10, Math.round(y * 10) / 10, Math.round(e.timeStamp - timeOrigin)];
  }

  function setTool(name) {
    tool = name;
    cropping = false;
    updateButtons();
  }

  canvas.addEventListener("pointerdown", (e) => {
    const penEraser = e.pointerType === "pen" && (e.button === 5 || (e.buttons & 32) !== 0);
    if (e.pointerType === "mouse" && e.button !== 0) return;
    if (gesture) return; // one pointer at a time
    e.preventDefault();
    // Focus leaves the LaTeX box, so that Ctrl+Z after drawing undoes strokes, not typing.
    canvas.focus({ preventScroll: true, focusVisible: false });
    try {
      canvas.setPointerCapture(e.pointerId);
    } catch (err) {
      // a pointer the browser does not track (synthetic events): draw without capture
    }
    activePointer = e.pointerId;
    clearTimeout(timer);
    if (cropping && picture) {
      gesture = "crop";
      const [x, y] = canvasPoint(e);
      cropBox = [x, y, x, y];
      return;
    }
    if (tool === "eraser" || penEraser) {
      gesture = "erase";
      erased = [];
      eraseAt(canvasPoint(e));
      return;
    }
    gesture = "draw";
    if (picture) { // writing replaces an uploaded image
      picture = null;
      strokes = [];
      undoStack = [];
      historyId = null;
    }
    if (strokes.length === 0) timeOrigin = e.timeStamp;
    current = [inkPoint(e)];
    strokes.push(current);
    redraw();
  });

  canvas.addEventListener("pointermove", (e) => {
    if (!gesture || e.pointerId !== activePointer) return;
    e.preventDefault();
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    if (gesture === "crop") {
      const [x, y] = canvasPoint(e);
      cropBox[2] = x;
      cropBox[3] = y;
      redraw();
      return;
    }
    if (gesture === "erase") {
      for (const ev of events.length ? events : [e]) eraseAt(canvasPoint(ev));
      return;
    }
    styleInk();
    ctx.beginPath();
    ctx.moveTo(...toCanvas(current[current.length - 1]));
    for (const ev of events.length ? events : [e]) {
      const p = inkPoint(ev);
      const prev = current[current.length - 1];
      if (p[0] === prev[0] && p[1] === prev[1]) continue;
      current.push(p);
      ctx.lineTo(...toCanvas(p));
    }
    ctx.stroke();
  });

  function endGesture(e) {
    if (!gesture || e.pointerId !== activePointer) return;
    const was = gesture;
    gesture = null;
    activePointer = null;
    if (was === "crop") {
      finishCrop();
      return;
    }
    if (was === "erase") {
      if (erased.length) {
        erased.sort((a, b) => a.index - b.index);
        record({ type: "erase", items: erased });
        erased = [];
        drawingChanged();
      }
      return;
    }
    const stroke = current;
    current = null;
    record({ type: "add", stroke });
    fitView();
    redraw();
    schedule();
  }
  canvas.addEventListener("pointerup", endGesture);
  canvas.addEventListener("pointercancel", endGesture);
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());

  // -- eraser ----------------------------------------------------------------------------------
  function nearStroke(s, x, y) {
    const r2 = ERASER_PX * ERASER_PX;
    let a = toCanvas(s[0]);
    if (s.length === 1) return (a[0] - x) ** 2 + (a[1] - y) ** 2 <= r2;
    for (let i = 1; i < s.length; i++) {
      const b = toCanvas(s[i]);
      const dx = b[0] - a[0], dy = b[1] - a[1];
      const len = dx * dx + dy * dy;
      const t = len ? Math.max(0, Math.min(1, ((x - a[0]) * dx + (y - a[1]) * dy) / len)) : 0;
      if ((a[0] + t * dx - x) ** 2 + (a[1] + t * dy - y) ** 2 <= r2) return true;
      a = b;
    }
    return false;
  }

  function indexBeforeErasing(i) {
    let j = i;
    for (const e of erased.map((it) => it.index).sort((a, b) => a - b)) {
      if (e > j) break;
      j++;
    }
    return j;
  }

  function eraseAt([x, y]) {
    let changed = false;
    for (let i = strokes.length - 1; i >= 0; i--) {
      if (!nearStroke(strokes[i], x, y)) continue;
      // Indices are of the drawing before this gesture, so that undo puts strokes back in place.
      erased.push({ index: indexBeforeErasing(i), stroke: strokes[i] });
      strokes.splice(i, 1);
      changed = true;
    }
    if (changed) redraw();
  }

  // -- undo, redo, clear -----------------------------------------------------------------------
  function record(action) {
    undoStack.push(action);
    redoStack = [];
  }

  function apply(action, forward) {
    if (action.type === "add") {
      if (forward) strokes.push(action.stroke);
      else strokes.pop();
    } else if (action.type === "erase") {
      if (forward) {
        for (const it of [...action.items].reverse()) strokes.splice(it.index, 1);
      } else {
        for (const it of action.items) strokes.splice(it.index, 0, it.stroke);
      }
    } else if (action.type === "clear") {
      strokes = forward ? [] : [...action.strokes];
    }
  }

  function undo() {
    if (gesture || undoStack.length === 0) return;
    const action = undoStack.pop();
    apply(action, false);
    redoStack.push(action);
    drawingChanged();
  }

  function redo() {
    if (gesture || redoStack.length === 0) return;
    const action = redoStack.pop();
    apply(action, true);
    undoStack.push(action);
    drawingChanged();
  }

  function drawingChanged() {
    fitView();
    redraw();
    if (strokes.length) {
      schedule();
    } else {
      cancelRequests();
      if (edited()) showAlternatives([]); // the user's own LaTeX outlives the drawing
      else clearOutput();
      setStatus("");
    }
  }

  function clearAll() {
    if (strokes.length) {
      record({ type: "clear", strokes: [...strokes] });
    } else if (picture) { // an image is not brought back by undo
      undoStack = [];
      redoStack = [];
    }
    cancelRequests();
    strokes = [];
    current = null;
    gesture = null;
    picture = null;
    cropping = false;
    cropBox = null;
    historyId = null;
    fitView();
    redraw();
    clearOutput();
    setStatus("");
  }

  function cancelRequests() {
    clearTimeout(timer);
    sequence++; // drop any answer still on its way
    if (inFlight) inFlight.abort();
    showBusy(false);
  }

  function clearOutput() {
    shown = "";
    latexBox.value = "";
    renderLatex();
    showAlternatives([]);
  }

  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", clearAll);
  $("pen").addEventListener("click", () => setTool("pen"));
  $("eraser").addEventListener("click", () => setTool("eraser"));
  $("recognize").addEventListener("click", () => recognizeAgain());

  document.addEventListener("keydown", (e) => {
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.toLowerCase();
    if (mod && key === "enter") {
      e.preventDefault();
      recognizeAgain();
      return;
    }
    // In a text field the browser's own text undo applies, and letters are typing.
    const typing = e.target === latexBox || e.target instanceof HTMLInputElement ||
      e.target instanceof HTMLSelectElement;
    if (typing) return;
    if (mod && ((key === "z" && e.shiftKey) || key === "y")) {
      e.preventDefault();
      redo();
    } else if (mod && key === "z") {
      e.preventDefault();
      undo();
    } else if (!mod && !e.altKey && key === "e") {
      setTool("eraser");
    } else if (!mod && !e.altKey && key === "p") {
      setTool("pen");
    } else if (key === "escape" && cropping) {
      cropping = false;
      cropBox = null;
      redraw();
    }
  });

  // -- images: upload, drag and drop, paste, crop --------------------------------------------
  function refuseFile(message) {
    // Whatever was on the pad and in the result belonged to the previous input: a refused file
    // must not look as if it had been read as that.
    clearAll();
    setStatus(message, true);
  }

  async function useImage(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      refuseFile(`Could not read it: ${file.name || "the file"} is not an image`);
      return;
    }
    if (file.size > MAX_UPLOAD) {
      refuseFile(`Could not read it: the image is larger than ${MAX_UPLOAD / 1048576} MB`);
      return;
    }
    cancelRequests();
    strokes = [];
    undoStack = [];
    redoStack = [];
    cropping = false;
    historyId = null;
    clearOutput();
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch (err) {
      bitmap = null; // the server still tries and explains what is wrong
    }
    picture = bitmap ? { bitmap, file } : null;
    fitView();
    redraw();
    sendImage(file);
  }

  function sendImage(file) {
    const form = new FormData();
    form.append("file", file, file.name || "pasted.png");
    send(form, null, true);
  }

  function finishCrop() {
    const box = cropBox;
    cropBox = null;
    cropping = false;
    redraw();
    if (!box || !picture || !picture.place) return;
    const p = picture.place;
    const b = picture.bitmap;
    const k = b.width / p.w; // canvas px -> image px
    const x0 = Math.max(0, (Math.min(box[0], box[2]) - p.x) * k);
    const y0 = Math.max(0, (Math.min(box[1], box[3]) - p.y) * k);
    const x1 = Math.min(b.width, (Math.max(box[0], box[2]) - p.x) * k);
    const y1 = Math.min(b.height, (Math.max(box[1], box[3]) - p.y) * k);
    if (x1 - x0 < 4 || y1 - y0 < 4) {
      setStatus("Crop: drag a box around the formula on the picture");
      return;
    }
    const cut = document.createElement("canvas");
    cut.width = Math.round(x1 - x0);
    cut.height = Math.round(y1 - y0);
    cut.getContext("2d").drawImage(b, x0, y0, x1 - x0, y1 - y0, 0, 0, cut.width, cut.height);
    const name = (picture.file.name || "image").replace(/\.[^.]*$/, "") + "-crop.png";
    cut.toBlob((blob) => {
      if (blob) useImage(new File([blob], name, { type: "image/png" }));
    }, "image/png");
  }

  $("upload").addEventListener("click", () => $("file").click());
  $("crop").addEventListener("click", () => {
    cropping = !cropping;
    cropBox = null;
    updateButtons();
    if (cropping) setStatus("Crop: drag a box around the formula (Esc cancels)");
  });
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
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(recognizeStrokes, DEBOUNCE_MS);
  }

  function recognizeStrokes(replace = false) {
    if (strokes.length === 0 || gesture) return;
    // A chosen model reads the drawing itself; otherwise the chosen reader (route) does.
    const byRoute = !symbolMode && !modelSelect.value && routeSelect.value;
    const route = byRoute ? { route: routeSelect.value } : {};
    const body = JSON.stringify({ strokes, ...route });
    send(body, { "content-type": "application/json" }, replace);
  }

  function recognizeAgain() {
    // The user asks for a new reading: it replaces whatever is in the LaTeX box.
    if (gesture) return;
    clearTimeout(timer);
    if (strokes.length) recognizeStrokes(true);
    else if (picture && picture.file) sendImage(picture.file);
  }

  async function send(body, headers, replace = false) {
    const mine = ++sequence;
    const isImage = body instanceof FormData;
    const symbols = symbolMode;
    if (inFlight) inFlight.abort();
    inFlight = new AbortController();
    const model = modelSelect.value;
    const url = symbols ? "/v1/symbol"
      : "/v1/recognize" + (model ? `?model=${encodeURIComponent(model)}` : "");
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
        // The input itself was refused: no earlier answer may stand as if it were its reading.
        if (isImage || [413, 415, 422].includes(resp.status)) clearOutput();
        setStatus(`Could not read it: ${detail}`, true);
        return;
      }
      showResult(symbols ? symbolAnswer(data) : data, replace || isImage);
    } catch (err) {
      if (err.name !== "AbortError" && mine === sequence) {
        setStatus("The server did not answer; is it still running?", true);
      }
    } finally {
      if (mine === sequence) showBusy(false);
    }
  }

  // Symbol classes that are commands taking an argument: written with an empty one, so that
  // they render (KaTeX refuses a bare \sqrt) and paste as valid LaTeX.
  const NEEDS_ARGUMENT = new Set(["\\sqrt"]);

  function symbolAnswer(d) {
    // The best candidate goes in the LaTeX box, all of them in the list, as alternatives do.
    const candidates = (d.candidates || []).map((c) => ({
      latex: NEEDS_ARGUMENT.has(c.latex) ? `${c.latex}{}` : c.latex,
      score: c.score,
    }));
    return {
      latex: candidates.length ? candidates[0].latex : "",
      alternatives: candidates,
      model: d.model,
      time_ms: d.time_ms,
      total_ms: d.total_ms,
      work: "classifying",
    };
  }

  function setSymbolMode(on) {
    symbolMode = on;
    $("symbol-mode").setAttribute("aria-pressed", String(on));
    cancelRequests();
    if (!edited()) clearOutput();
    setStatus(on ? "Which symbol is this? Draw one symbol" : "");
    recognizeAgain();
  }
  $("symbol-mode").addEventListener("click", () => setSymbolMode(!symbolMode));

  function showBusy(on) {
    busy.hidden = !on;
    document.body.classList.toggle("waiting", on);
  }

  function edited() {
    const text = latexBox.value.trim();
    return text !== "" && text !== shown.trim();
  }

  function showResult(r, replace) {
    const keep = edited() && !replace;
    if (!keep) {
      shown = r.latex;
      latexBox.value = r.latex;
      renderLatex();
    }
    showAlternatives(r.alternatives || []);
    const ms = (v) => `${Math.round(v)} ms`;
    const kept = keep ? "Your edit is kept (Recognize replaces it) · " : "";
    setStatus(`${kept}${r.latex ? "" : "Nothing recognized · "}${answeredBy(r.model)} · ` +
      `${ms(r.time_ms)} ${r.work || "decoding"}, ${ms(r.total_ms)} on the server`);
    statusLine.dataset.timeMs = String(r.time_ms);
    statusLine.dataset.model = r.model;
    remember();
  }

  function answeredBy(model) {
    // Fusion answers with both models' names joined: say that two models read it.
    if (model && model === routes.fusion) return `models ${model} (fusion)`;
    return `model ${model}`;
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

  function markChosen() {
    const text = latexBox.value.trim();
    for (const btn of altsList.querySelectorAll("button")) {
      btn.classList.toggle("chosen", btn.dataset.latex === text);
    }
  }

  function showAlternatives(alts) {
    altsList.replaceChildren();
    altsTitle.textContent = symbolMode ? "Which symbol? Top candidates" : "Alternatives";
    altsTitle.hidden = alts.length < 2;
    if (alts.length < 2) return;
    for (const a of alts) {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.title = a.latex;
      btn.dataset.latex = a.latex;
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
        shown = a.latex;
        latexBox.value = a.latex;
        renderLatex();
        markChosen();
        remember();
      });
      li.append(btn);
      altsList.append(li);
    }
    markChosen();
  }

  let editTimer = null;
  latexBox.addEventListener("input", () => {
    renderLatex();
    markChosen();
    clearTimeout(editTimer);
    editTimer = setTimeout(remember, 800);
  });

  // -- copy ----------------------------------------------------------------------------------
  function mathml(tex) {
    if (!window.katex || !tex) return "";
    const html = window.katex.renderToString(tex, {
      output: "mathml", displayMode: true, throwOnError: false, strict: "ignore",
    });
    const math = html.match(/<math[\s\S]*<\/math>/);
    return math ? math[0] : "";
  }

  const copyFormats = {
    copy: (tex) => tex,
    "copy-inline": (tex) => `$${tex}$`,
    "copy-mathml": mathml,
  };

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (err) { // older browsers, or no permission: copy through a hidden text field
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.append(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      return ok;
    }
  }

  for (const [id, format] of Object.entries(copyFormats)) {
    const btn = $(id);
    const label = btn.textContent;
    btn.addEventListener("click", async () => {
      const tex = latexBox.value.trim();
      if (!tex) {
        setStatus("Nothing to copy yet");
        return;
      }
      const ok = await copyText(format(tex));
      btn.textContent = ok ? "Copied" : "Copy failed";
      remember();
      setTimeout(() => { btn.textContent = label; }, 1200);
    });
  }

  // -- history (kept in this browser only) ---------------------------------------------------
  function loadHistory() {
    try {
      const items = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
      return Array.isArray(items) ? items.filter((it) => it && typeof it.latex === "string") : [];
    } catch (err) {
      return [];
    }
  }

  function saveHistory(items) {
    try {
      localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, HISTORY_MAX)));
    } catch (err) {
      // storage full or disabled: the page works without a history
    }
  }

  function remember() {
    // One entry per drawing or image, updated as it is read and edited.
    const tex = latexBox.value.trim();
    if (!tex) return;
    const items = loadHistory();
    const at = Date.now();
    const old = items.findIndex((it) => it.id === historyId);
    if (old >= 0) items.splice(old, 1);
    historyId = historyId || `${at}-${Math.random().toString(36).slice(2, 8)}`;
    items.unshift({ id: historyId, latex: tex, at, image: Boolean(picture) });
    saveHistory(items);
    showHistory();
  }

  function showHistory() {
    const items = loadHistory();
    historyList.replaceChildren();
    $("history-empty").hidden = items.length > 0;
    $("history-clear").hidden = items.length === 0;
    for (const it of items) {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.title = `Use again: ${it.latex}`;
      const math = document.createElement("span");
      if (window.katex) {
        window.katex.render(it.latex, math, { throwOnError: false, strict: "ignore" });
      } else {
        math.textContent = it.latex;
      }
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = new Date(it.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      btn.append(math, when);
      btn.addEventListener("click", () => {
        clearAll();
        historyId = it.id;
        shown = it.latex;
        latexBox.value = it.latex;
        renderLatex();
        setStatus("From your recent results");
      });
      li.append(btn);
      historyList.append(li);
    }
  }

  $("history-clear").addEventListener("click", () => {
    saveHistory([]);
    historyId = null;
    showHistory();
  });
  window.addEventListener("storage", (e) => { if (e.key === HISTORY_KEY) showHistory(); });

  // -- models and readers -----------------------------------------------------------------
  async function loadModels() {
    try {
      const resp = await fetch("/v1/models");
      const data = await resp.json();
      $("symbol-mode").hidden = !data.symbol_model;
      showRoutes(data.routes || {}, data.ink_route);
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

  function showRoutes(available, serverDefault) {
    // The readers of drawings this server has; shown when there is a choice. The server's
    // default is marked and chosen until the user picks another (remembered in this browser).
    routes = available;
    const names = Object.keys(ROUTE_NAMES).filter((r) => available[r]);
    if (names.length < 2) return;
    routeSelect.replaceChildren();
    for (const r of names) {
      const opt = document.createElement("option");
      opt.value = r;
      opt.textContent = ROUTE_NAMES[r] + (r === serverDefault ? " — default" : "");
      opt.title = available[r];
      routeSelect.append(opt);
    }
    let saved = null;
    try { saved = localStorage.getItem(ROUTE_KEY); } catch (err) { saved = null; }
    routeSelect.value = names.includes(saved) ? saved : serverDefault;
    if (!routeSelect.value) routeSelect.value = names[0];
    $("route-box").hidden = false;
    updateRouteBox();
  }

  function updateRouteBox() {
    // Model and route are alternatives (the API takes one): a chosen model sets the reader aside.
    routeSelect.disabled = Boolean(modelSelect.value);
  }

  modelSelect.addEventListener("change", () => {
    updateRouteBox();
    if (strokes.length) schedule();
  });
  routeSelect.addEventListener("change", () => {
    try {
      localStorage.setItem(ROUTE_KEY, routeSelect.value);
    } catch (err) {
      // storage disabled: the choice holds until the page is left
    }
    if (strokes.length && !symbolMode) schedule();
  });

  if (window.ResizeObserver) new ResizeObserver(resize).observe(canvas);
  window.addEventListener("resize", resize);
  resize();
  renderLatex();
  showHistory();
  loadModels();
})();
