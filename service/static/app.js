// The try-it page: plain JavaScript over the public API (POST /v1/video/chat with stream=true).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, videoId: null, history: [], key: sessionStorage.getItem("avchat-key") || "" };

function headers() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// An OpenAI error body (or anything else) as one readable sentence.
async function errorText(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = body.error ? body.error.message : JSON.stringify(body);
  } catch (e) {
    detail = response.statusText;
  }
  const what = { 401: "The API key was refused", 404: "Not found", 408: "The upload was too slow",
                 413: "The file is too large", 415: "That file cannot be used", 422: "The request is not valid",
                 503: "The service is busy or still loading", 504: "The answer took too long" }[response.status];
  return (what ? what + ": " : "Error " + response.status + ": ") + detail;
}

async function loadModel() {
  const response = await fetch("v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-box").hidden = false;
    $("model").textContent = "";
    return;
  }
  if (!response.ok) {
    $("model").textContent = "service not ready yet";
    setTimeout(loadModel, 2000);
    return;
  }
  const body = await response.json();
  const card = body.data[0];
  $("model").textContent = `model ${card.id} · ${card.engine} · ${card.modalities.join(" + ")}`;
  $("toy").hidden = !TOY_MODELS.includes(card.id);
}

// The built-in models: trained on synthetic clips (demo) or not at all (tiny).
const TOY_MODELS = ["demo", "tiny"];

// The window the next upload analyses: a changed window is another video_id, so it uploads again.
function windowChanged() {
  state.videoId = null;
  state.history = [];
  $("chat").replaceChildren();
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  state.videoId = null;
  state.history = [];
  $("chat").replaceChildren();
  showError("");
  const url = URL.createObjectURL(file);
  const isImage = file.type.startsWith("image/");
  $("preview").hidden = isImage;
  $("preview-image").hidden = !isImage;
  if (isImage) $("preview-image").src = url; else $("preview").src = url;
  const size = file.size >= 1e6 ? `${(file.size / 1e6).toFixed(1)} MB` : `${Math.ceil(file.size / 1e3)} kB`;
  $("file-info").textContent = `${file.name} · ${size}`;
}

// Server-sent events from a fetch body: calls onEvent(object) for each `data:` line.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of frame.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function answerBox(parent, title) {
  const box = document.createElement("div");
  box.className = "answer";
  box.innerHTML = "<h3></h3><div class='text'></div><div class='meta'></div>";
  box.querySelector("h3").textContent = title;
  parent.appendChild(box);
  return box;
}

function describe(usage, media) {
  const parts = [];
  if (usage) {
    const d = usage.prompt_tokens_details || {};
    parts.push(`tokens: audio ${d.audio_tokens || 0} · video ${d.video_tokens || 0} · text ${d.text_tokens || 0}` +
               ` · answer ${usage.completion_tokens}`);
  }
  if (media) {
    let line = `media: ${media.duration_s.toFixed(1)} s analysed · ${media.frames} frames · heard ` +
               `${media.audio_s.toFixed(1)} s`;
    if (media.audio_truncated_s > 0) line += ` (${media.audio_truncated_s.toFixed(1)} s not heard)`;
    parts.push(line);
  }
  return parts.join("\n");
}

// One streamed answer: fills `box` token by token; calls onVideoId once the service names the
// video; resolves to the answer's text.
async function ask(box, modalities, onVideoId = () => {}) {
  const form = new FormData();
  if (state.videoId) form.append("video_id", state.videoId);
  else {
    form.append(state.file.type.startsWith("image/") ? "image" : "video", state.file, state.file.name);
    for (const field of ["start", "end"]) if ($(field).value !== "") form.append(field, $(field).value);
  }
  form.append("messages", JSON.stringify(state.history));
  form.append("input_modalities", modalities);
  form.append("stream", "true");
  form.append("stream_options", JSON.stringify({ include_usage: true }));
  const response = await fetch("v1/video/chat", { method: "POST", body: form, headers: headers() });
  if (!response.ok) throw new Error(await errorText(response));
  const text = box.querySelector(".text");
  let usage = null, media = null;
  await readEvents(response, (event) => {
    if (event.error) throw new Error(event.error.message);
    if (event.video_id) onVideoId(event.video_id);
    for (const choice of event.choices || []) text.textContent += choice.delta.content || "";
    if (event.usage) usage = event.usage;
    if (event.media) media = event.media;
  });
  box.querySelector(".meta").textContent = describe(usage, media);
  return text.textContent;
}

async function onSubmit(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!state.file) return showError("Choose a video first.");
  if (!question) return;
  showError("");
  $("send").disabled = true;
  const you = document.createElement("li");
  you.className = "you";
  you.textContent = question;
  const turn = document.createElement("li");
  turn.className = "answers";
  $("chat").append(you, turn);
  state.history.push({ role: "user", content: question });
  const runs = $("compare").checked
    ? [["audio,video", "audio + video"], ["video", "video only"]]
    : [["audio,video", "answer"]];
  try {
    const boxes = runs.map(([, title]) => answerBox(turn, title));
    // The first answer uploads the video (if it has no id yet); the comparison waits for the id,
    // so the file is sent once.
    let named;
    const idKnown = new Promise((resolve) => { named = resolve; });
    const first = ask(boxes[0], runs[0][0], (id) => { state.videoId = state.videoId || id; named(); });
    first.catch(() => named());
    const rest = runs.slice(1).map(([mods], i) => idKnown.then(() => ask(boxes[i + 1], mods)));
    const results = await Promise.allSettled([first, ...rest]);
    results.forEach((r, i) => {
      if (r.status === "rejected") {
        boxes[i].classList.add("failed");
        boxes[i].querySelector(".text").textContent = r.reason.message;
      }
    });
    if (results[0].status === "rejected") {
      showError(results[0].reason.message);
      state.history.pop();
    } else {
      state.history.push({ role: "assistant", content: results[0].value });
      $("question").value = "";
    }
  } finally {
    $("send").disabled = false;
  }
}

$("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  chooseFile(e.dataTransfer.files[0]);
});
$("ask").addEventListener("submit", onSubmit);
$("start").addEventListener("change", windowChanged);
$("end").addEventListener("change", windowChanged);
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
});
$("save-key").addEventListener("click", () => {
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("avchat-key", state.key);
  $("key-box").hidden = true;
  loadModel();
});
loadModel();
