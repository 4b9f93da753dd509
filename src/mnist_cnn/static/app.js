// The drawing page: strokes on a canvas -> PNG -> POST /v1/predict -> class, one bar per class, 28x28 view.
// The bars are the ten digits until /healthz names the model's classes (letters, folder names).
// Served by the package itself; no external scripts, fonts or URLs.
(function () {
  "use strict";
  const THROTTLE_MS = 120; // predict while drawing, at most once per this interval (and at the end)
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const seen = document.getElementById("seen");
  const digitEl = document.getElementById("digit");
  const confidenceEl = document.getElementById("confidence");
  const statusEl = document.getElementById("status");
  const bars = document.getElementById("bars");

  let drawing = false, last = null;
  let timer = null;
  let inFlight = false, pending = false;
  let drawSeq = 0; // bumped on every change; the result shows which change it answers (data-seq)
  let requestedSeq = 0; // the drawing the latest request asked about
  let clearedSeq = 0; // answers for drawings before the last clear are dropped

  function makeBars(names) {
    bars.replaceChildren();
    for (const name of names) {
      const li = document.createElement("li");
      li.innerHTML = `<span></span><span class="track"><span class="fill"></span></span><span class="value">–</span>`;
      li.firstChild.textContent = name; // a folder's name is text, never markup
      bars.appendChild(li);
    }
  }
  makeBars(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);

  function clearPad() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
  }

  function point(e) { // CSS pixels -> canvas pixels, whatever size the canvas is shown at
    const r = pad.getBoundingClientRect();
    return { x: (e.clientX - r.left) * pad.width / r.width, y: (e.clientY - r.top) * pad.height / r.height };
  }

  function strokeTo(p) {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 20; // ~2 px after the 20x20 fit, like MNIST's pen
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    last = p;
  }

  function changed() {
    drawSeq += 1;
    pad.dataset.seq = String(drawSeq);
    if (timer === null) timer = setTimeout(() => { timer = null; predict(); }, THROTTLE_MS);
  }

  pad.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    drawing = true;
    last = point(e);
    strokeTo(last); // a tap leaves a dot
    changed();
  });
  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of (events.length ? events : [e])) strokeTo(point(ev));
    changed();
  });
  function endStroke() {
    if (!drawing) return;
    drawing = false;
    clearTimeout(timer);
    timer = null;
    predict(); // no-op when this drawing was already sent
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  document.getElementById("clear").addEventListener("click", () => {
    clearPad();
    drawSeq += 1;
    pad.dataset.seq = String(drawSeq);
    clearTimeout(timer);
    timer = null;
    requestedSeq = clearedSeq = drawSeq; // nothing to ask about a blank pad; answers in flight are stale
    showEmpty("draw with the mouse or a finger");
    digitEl.dataset.seq = String(drawSeq);
  });

  function showEmpty(message) {
    digitEl.textContent = "?";
    confidenceEl.innerHTML = "&nbsp;";
    statusEl.textContent = message;
    for (const li of bars.children) {
      li.classList.remove("best");
      li.querySelector(".fill").style.width = "0";
      li.querySelector(".value").textContent = "–";
    }
    seen.getContext("2d").clearRect(0, 0, 28, 28);
  }

  function show(p) {
    digitEl.textContent = p.label ?? String(p.digit);
    confidenceEl.textContent = `${(p.probability * 100).toFixed(1)}% sure`;
    statusEl.textContent = "";
    p.probabilities.forEach((q, d) => {
      const li = bars.children[d];
      li.classList.toggle("best", d === p.digit);
      li.querySelector(".fill").style.width = `${(q * 100).toFixed(1)}%`;
      li.querySelector(".value").textContent = `${(q * 100).toFixed(1)}%`;
    });
    if (p.image) {
      const img = seen.getContext("2d").createImageData(28, 28);
      p.image.forEach((row, y) => row.forEach((v, x) => {
        const i = (y * 28 + x) * 4;
        img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
        img.data[i + 3] = 255;
      }));
      seen.getContext("2d").putImageData(img, 0, 0);
    }
  }

  async function predict() {
    if (drawSeq === requestedSeq) return;
    if (inFlight) { pending = true; return; } // one request at a time; the latest drawing follows
    inFlight = true;
    const seq = drawSeq;
    requestedSeq = seq;
    const current = () => seq > clearedSeq; // while drawing, a slightly older answer still helps
    try {
      const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
      const body = new FormData();
      body.append("file", blob, "drawing.png");
      const res = await fetch("/v1/predict", { method: "POST", body });
      const data = await res.json();
      if (current()) {
        if (res.ok) show(data.predictions[0]);
        else if (data.error === "blank_image") showEmpty("draw a digit");
        else showEmpty(`error: ${data.detail || res.status}`);
        digitEl.dataset.seq = String(seq);
      }
    } catch (err) {
      if (current()) {
        showEmpty(`cannot reach the server (${err})`);
        digitEl.dataset.seq = String(seq);
      }
    } finally {
      inFlight = false;
      if (pending) { pending = false; predict(); }
    }
  }

  async function loadModel() {
    try {
      const m = (await (await fetch("/healthz")).json()).model;
      const acc = m.test_accuracy == null ? "" : `, test accuracy ${(m.test_accuracy * 100).toFixed(2)}%`;
      document.getElementById("model").textContent = `model ${m.name} (${m.params.toLocaleString()} parameters${acc})`;
      if (m.classes) {
        makeBars(m.classes);
        document.querySelector("h1").textContent = `Draw one of ${m.classes.length} classes`;
      }
    } catch (err) {
      document.getElementById("model").textContent = "model information unavailable";
    }
  }

  clearPad();
  pad.dataset.seq = "0";
  loadModel();
})();
