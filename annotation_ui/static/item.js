// Item page: waveform from precomputed peaks, playback speed, the word being said highlighted, keyboard actions.
(function () {
  "use strict";
  const audio = document.getElementById("audio");
  const canvas = document.getElementById("wave");
  const player = document.getElementById("player");
  const raw = JSON.parse(player.dataset.peaks || "[]");
  // Scaled to the loudest slice: corpora are recorded at very different levels.
  const top = Math.max(1e-4, ...raw);
  const peaks = raw.map((p) => p / top);
  const words = Array.from(document.querySelectorAll("#transcript .word")).map((el) => ({
    el, s: parseFloat(el.dataset.s), e: parseFloat(el.dataset.e),
  }));
  const speeds = Array.from(document.getElementById("speed").options).map((o) => parseFloat(o.value));
  const speed = document.getElementById("speed");
  const form = document.getElementById("decision-form");
  const reasons = document.getElementById("reasons");
  let mode = "view";
  let current = null;

  function draw() {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, n = peaks.length || 1;
    const played = audio.duration ? audio.currentTime / audio.duration : 0;
    ctx.clearRect(0, 0, w, h);
    for (let i = 0; i < peaks.length; i++) {
      const x = (i / n) * w, bar = Math.max(1, peaks[i] * (h - 4));
      ctx.fillStyle = i / n < played ? "#2463eb" : "#9aa7bd";
      ctx.fillRect(x, (h - bar) / 2, Math.max(1, w / n - 0.5), bar);
    }
    ctx.fillStyle = "#d33";
    ctx.fillRect(played * w, 0, 2, h);
  }

  function highlight() {
    const t = audio.currentTime;
    // Browsers round the position down (Chromium: to whole microseconds), so a seek to a word's start lands a hair
    // before it; 1 ms of slack keeps the clicked word lit instead of the one before it.
    const at = t + 0.001;
    const found = words.find((w) => at >= w.s && at < w.e) || null;
    if (found !== current) {
      if (current) current.el.classList.remove("current");
      if (found) found.el.classList.add("current");
      current = found;
    }
    document.getElementById("time").textContent = t.toFixed(2) + " s";
    draw();
  }

  function tick() {
    highlight();
    if (!audio.paused) requestAnimationFrame(tick);
  }

  function toggle() {
    if (audio.paused) audio.play(); else audio.pause();
  }

  function setSpeed(step) {
    const k = Math.min(speeds.length - 1, Math.max(0, speeds.indexOf(parseFloat(speed.value)) + step));
    speed.value = String(speeds[k]);
    audio.playbackRate = speeds[k];
  }

  function enter(newMode) {
    mode = newMode;
    const editing = mode === "edit", rejecting = mode === "reject";
    document.querySelectorAll(".editor").forEach((t) => { t.hidden = !editing; });
    document.getElementById("save-edit").hidden = !editing;
    reasons.hidden = !rejecting;
    document.getElementById("save-reject").hidden = !rejecting;
    if (editing) document.getElementById("edit-rationale").focus();
  }

  function save() {
    const button = { edit: "save-edit", reject: "save-reject" }[mode] || "accept";
    form.requestSubmit(document.getElementById(button));
  }

  audio.addEventListener("play", () => { document.getElementById("play").textContent = "Pause ❚❚"; tick(); });
  audio.addEventListener("pause", () => { document.getElementById("play").textContent = "Play ▶"; highlight(); });
  audio.addEventListener("timeupdate", highlight);
  audio.addEventListener("loadedmetadata", draw);
  document.getElementById("play").addEventListener("click", toggle);
  speed.addEventListener("change", () => { audio.playbackRate = parseFloat(speed.value); });
  canvas.addEventListener("click", (ev) => {
    if (!audio.duration) return;
    const r = canvas.getBoundingClientRect();
    audio.currentTime = ((ev.clientX - r.left) / r.width) * audio.duration;
    highlight();
  });
  words.forEach((w) => w.el.addEventListener("click", () => { audio.currentTime = w.s; highlight(); }));
  document.getElementById("edit").addEventListener("click", () => enter("edit"));
  document.getElementById("reject").addEventListener("click", () => enter("reject"));

  document.addEventListener("keydown", (ev) => {
    const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(document.activeElement.tagName) &&
      document.activeElement.type !== "checkbox";
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); save(); return; }
    if (ev.key === "Escape") { document.activeElement.blur(); return; }
    if (typing || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const actions = {
      " ": toggle,
      ArrowLeft: () => { audio.currentTime = Math.max(0, audio.currentTime - 2); highlight(); },
      ArrowRight: () => { audio.currentTime = Math.min(audio.duration || 0, audio.currentTime + 2); highlight(); },
      "[": () => setSpeed(-1),
      "]": () => setSpeed(1),
      a: () => { mode = "view"; save(); },
      e: () => enter("edit"),
      r: () => enter("reject"),
      c: () => document.getElementById("comment").focus(),
      n: () => { window.location.href = "/next"; },
      "?": () => { window.open("/guidelines", "_blank", "noopener"); },
    };
    if (mode === "reject" && /^[1-9]$/.test(ev.key)) {
      const box = reasons.querySelector(`input[data-key="${ev.key}"]`);
      if (box) { box.checked = !box.checked; ev.preventDefault(); }
      return;
    }
    if (actions[ev.key]) { ev.preventDefault(); actions[ev.key](); }
  });
  draw();
})();
