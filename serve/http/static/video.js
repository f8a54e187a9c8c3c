// Video: a clip (AnimateDiff, or SVD animating a still) made as a background job, its frames multiplied by RIFE if
// asked, played when done.

import { call, fetchBlob } from "./api.js";
import { curlJson, showCalls, videoCalls } from "./calls.js";
import { $, downloadLink, fileBase64, h } from "./dom.js";

const POLL_MS = 500;
const ANIMATES_STILLS = "svd"; // the family whose models animate a still (input_reference), SVD's fields shown
let shown = null; // the video object shown last
let still = null; // the chosen still, base64
let models = []; // GET /v1/models' list

function animatesStill() {
  return models.find((model) => model.id === $("#video-model").value)?.family === ANIMATES_STILLS;
}

function body() {
  const made = {
    prompt: $("#video-prompt").value,
    frames: Number($("#video-frames").value),
    fps: Number($("#video-fps").value),
    steps: Number($("#video-steps").value),
  };
  if ($("#video-seed").value !== "") made.seed = Number($("#video-seed").value);
  if ($("#video-model").value) made.model = $("#video-model").value;
  if (still) made.input_reference = still;
  if (animatesStill()) made.motion_bucket_id = Number($("#video-motion_bucket_id").value);
  if ($("#video-character").value) made.character = { name: $("#video-character").value };
  if ($("#video-identity").value) made.identity = { character: $("#video-identity").value };
  const factor = Number($("#video-factor").value);
  if (factor) made.interpolate = { factor };
  return made;
}

function updateCall() {
  showCalls($("#video-call"), videoCalls(body()));
}

function showRefusal(error) {
  const field = String(error.param ?? "").split(".")[0];
  const place = $(`#video-${CSS.escape(field)}-error`) || $("#video-error");
  place.textContent = error.message;
}

function facts(video) {
  const rows = [
    ["video", video.id],
    ["status", video.status],
    ["frames", `${video.frames} at ${video.fps} fps (${video.seconds} s)`],
    ["size", video.size],
    ["seed", video.seed],
  ];
  return h("dl", { class: "facts" }, ...rows.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, String(value))]));
}

/** Follow video `id` until it is over (its progress shown), then play it. */
async function follow(id) {
  for (;;) {
    const video = await call("GET", `/v1/videos/${encodeURIComponent(id)}`);
    $("#video-bar").value = video.progress;
    $("#video-status").textContent = `${video.status}: ${video.progress}%`;
    $("#video-facts").replaceChildren(facts(video));
    if (video.status === "completed") return play(video);
    if (video.status === "failed") throw new Error(video.error?.message ?? "the video failed");
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function play(video) {
  shown = video;
  const mp4 = await fetchBlob(`/v1/videos/${encodeURIComponent(video.id)}/content`);
  const player = h("video", { src: URL.createObjectURL(mp4), controls: "", loop: "", "aria-label": `video ${video.id}` });
  $("#video-player").replaceChildren(player, downloadLink("Download MP4", mp4, `${video.id}.mp4`));
  $("#video-more").hidden = false; // a finished video may be interpolated afterwards
}

async function run(send) {
  for (const error of document.querySelectorAll("#video-form .error")) error.textContent = "";
  $("#video-more").hidden = true;
  $("#video-status").textContent = "queued";
  try {
    await follow((await send()).id);
  } catch (error) {
    $("#video-status").textContent = "refused";
    showRefusal(error);
  }
}

/** The models of GET /v1/models in the Model field (an SVD one shows its fields). */
export async function loadModels() {
  const select = $("#video-model");
  const kept = select.value;
  models = (await call("GET", "/v1/models")).data;
  select.replaceChildren(
    h("option", { value: "" }, "the stack's default"),
    ...models.map((model) => h("option", { value: model.id }, `${model.id} (${model.family})`)),
  );
  select.value = models.some((model) => model.id === kept) ? kept : "";
  chosenModel();
}

function chosenModel() {
  $("#video-svd").hidden = !animatesStill();
  updateCall();
}

/** Wire the Video section. */
export function setUp() {
  $("#video-model").addEventListener("change", chosenModel);
  $("#video-still").addEventListener("change", async () => {
    const file = $("#video-still").files[0];
    still = file ? await fileBase64(file) : null;
    updateCall();
  });
  $("#video-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(() => call("POST", "/v1/videos", body()));
  });
  $("#video-form").addEventListener("input", updateCall);
  $("#video-interpolate-finished").addEventListener("click", () => {
    const path = `/v1/videos/${encodeURIComponent(shown.id)}/interpolate`;
    const asked = { factor: Number($("#video-more-factor").value) };
    showCalls($("#video-call"), [["curl", curlJson(path, asked)]]);
    run(() => call("POST", path, asked));
  });
  updateCall();
}
