// Draw: the generation form, the prompt's analysis as it is typed, progress, cancel, the pictures and the call.

import { ApiError, JOB_ENDS, call, events } from "./api.js";
import { curlJson, generationCalls, showCalls } from "./calls.js";
import { $, b64Blob, dataUrl, downloadLink, h, imageType, numberOf } from "./dom.js";
import * as imagesIn from "./images_in.js";

const GENERATE = "/v1/images/generations";
const FIELDS = ["negative_prompt", "model", "size", "num_inference_steps", "guidance_scale", "scheduler", "seed", "n"];
const NUMBERS = ["num_inference_steps", "guidance_scale", "seed", "n"];

let studio; // what main.js learned of the stack and the key: {jobs, admin}
let running = null; // the generation in flight: {job, abort}
let models = []; // GET /v1/models' list

/** The generation's body, as the form says it (empty fields left to the API's defaults). */
export function requestBody() {
  const body = { prompt: $("#prompt").value };
  for (const name of FIELDS) {
    const text = $(`#${name}`).value;
    const value = NUMBERS.includes(name) ? numberOf(text) : text.trim() === "" ? undefined : text;
    if (value !== undefined) body[name] = value;
  }
  const loras = [...document.querySelectorAll("#loras input[type=checkbox]:checked")].map((box) => ({
    name: box.value,
    scale: numberOf($(`#lora-scale-${box.dataset.index}`).value) ?? 1,
  }));
  if (loras.length) body.loras = loras;
  if ($("#character").value) body.character = { name: $("#character").value };
  if ($("#identity").value) body.identity = { character: $("#identity").value };
  return { ...body, ...imagesIn.imageFields() };
}

function updateCall() {
  showCalls($("#draw-call"), generationCalls(requestBody()));
}

/** Clear every error beside a field. */
function clearErrors(form) {
  for (const error of form.querySelectorAll(".error")) error.textContent = "";
  for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
}

/** An API error beside the field its `param` names (its first part: `loras.0.name` is `loras`), else below. */
export function showError(form, error, fallback) {
  const field = String(error.param ?? "").split(".")[0];
  const place = (field && form.querySelector(`#${CSS.escape(field)}-error`)) || fallback;
  place.textContent = error instanceof ApiError ? error.message : `Error: ${error.message}`;
  if (field && form.querySelector(`#${CSS.escape(field)}`)) form.querySelector(`#${CSS.escape(field)}`).setAttribute("aria-invalid", "true");
}

function progress(step, total) {
  $("#draw-bar").max = total || 1;
  $("#draw-bar").value = step;
  $("#draw-progress").textContent = `step ${step} of ${total}`;
}

function figure(item, prompt, seed) {
  const type = imageType(item.b64_json);
  const extension = type.split("/")[1].replace("svg+xml", "svg");
  return h(
    "figure",
    { class: "picture" },
    h("img", { src: dataUrl(item.b64_json, type), alt: prompt, "data-id": item.id ?? "" }),
    h(
      "figcaption",
      {},
      h("span", {}, `seed ${item.seed ?? seed}`),
      item.scores ? h("span", { class: "scores" }, ` ${Object.entries(item.scores).map(([name, value]) => `${name} ${typeof value === "number" ? value.toFixed(3) : value}`).join(", ")}`) : "",
      " ",
      downloadLink("Download", b64Blob(item.b64_json, type), `${item.id ?? "image"}.${extension}`),
      " ",
      h("button", { type: "button", onclick: () => useSeed(item.seed ?? seed) }, "Use seed"),
      " ",
      h("button", { type: "button", onclick: () => imagesIn.useAsInput(item.b64_json, type) }, "Use as input"),
    ),
  );
}

/** Put `seed` in the form's Seed field. */
export function useSeed(seed) {
  $("#seed").value = String(seed);
  updateCall();
}

/** Fill the form from a kept image's record (its PNG `parameters`). */
export function useRecord(record) {
  const fields = {
    prompt: record.prompt,
    negative_prompt: record.negative_prompt,
    model: record.model,
    size: record.size,
    num_inference_steps: record.steps,
    guidance_scale: record.guidance_scale,
    scheduler: record.sampler,
    seed: record.seed,
  };
  for (const [name, value] of Object.entries(fields)) if (value != null) $(`#${name}`).value = String(value);
  updateCall();
}

async function viaJob(body, abort) {
  const job = await call("POST", GENERATE, { ...body, background: true });
  running.job = job.id;
  let final = null;
  for await (const event of events(`/v1/jobs/${job.id}/events`, abort.signal)) {
    const at = event.type === "state" ? event.data.progress : event.data;
    if ((event.type === "state" || event.type === "progress") && at?.total) progress(at.step, at.total);
    if (event.type in JOB_ENDS) {
      final = JOB_ENDS[event.type];
      break;
    }
  }
  const done = await call("GET", `/v1/jobs/${job.id}`);
  if (done.status === "failed") throw new ApiError(400, done.error?.error ?? done.error);
  if (done.status === "canceled" || final === "canceled") return null;
  return done;
}

async function draw(event) {
  event.preventDefault();
  const form = $("#draw-form");
  clearErrors(form);
  const body = requestBody();
  const abort = new AbortController();
  running = { job: null, abort };
  $("#draw-button").disabled = true;
  $("#cancel-button").disabled = false;
  $("#draw-time").textContent = "";
  $("#draw-images").replaceChildren();
  progress(0, body.num_inference_steps ?? 0);
  $("#draw-progress").textContent = "queued";
  if (!studio.jobs) $("#draw-progress").textContent = "drawing (this key has no jobs scope, so no steps are shown)";
  const started = performance.now();
  try {
    const answer = studio.jobs ? await viaJob(body, abort) : await call("POST", GENERATE, body, { signal: abort.signal });
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    if (answer === null) {
      $("#draw-progress").textContent = "canceled";
      return;
    }
    const prompt = body.prompt;
    $("#draw-images").replaceChildren(...answer.data.map((item) => figure(item, prompt, answer.seed)));
    $("#draw-time").textContent = `${answer.data.length} image(s) by ${answer.model} in ${seconds} s, seed ${answer.seed}`;
    const stepped = studio.jobs && $("#draw-progress").textContent.startsWith("step "); // no steps: a kept answer
    $("#draw-bar").value = $("#draw-bar").max;
    $("#draw-progress").textContent = stepped ? `${$("#draw-progress").textContent}: done` : "done";
  } catch (error) {
    if (error.name === "AbortError") $("#draw-progress").textContent = "canceled";
    else {
      $("#draw-progress").textContent = "refused";
      showError(form, error, $("#draw-error"));
    }
  } finally {
    running = null;
    $("#draw-button").disabled = false;
    $("#cancel-button").disabled = true;
  }
}

async function cancel() {
  if (!running) return;
  $("#cancel-button").disabled = true;
  $("#draw-progress").textContent = "canceling";
  if (running.job) {
    const path = `/v1/jobs/${running.job}/cancel`;
    showCalls($("#draw-call"), [["curl", curlJson(path, undefined)]]); // the drawing's own call again on the next edit
    await call("POST", path).catch(() => running?.abort.abort());
  }
  else running.abort.abort();
}

function weights(part) {
  return (part?.weights ?? []).map(({ text, weight }) =>
    weight === 1
      ? h("span", {}, text)
      : h("mark", { class: weight > 1 ? "up" : "down", title: `weight ${weight}` }, text, h("sub", {}, `×${weight}`)),
  );
}

function counts(part, encoders) {
  return Object.entries(part?.encoders ?? {}).map(([name, count]) => {
    const limit = encoders[name];
    const cut = count.truncated ? h("strong", { class: "warn" }, `: ${count.truncated} tokens would be cut`) : "";
    return h("li", {}, `${name}: ${count.tokens} tokens, ${count.chunks} of ${limit?.max_chunks ?? "?"} chunks of ${limit?.chunk_tokens ?? "?"}`, cut);
  });
}

let analysisTimer = null;
let analysisAsked = 0; // the latest analysis asked: an earlier one answering later is dropped
async function analyze() {
  const asked = ++analysisAsked;
  const prompt = $("#prompt").value;
  const place = $("#prompt-analysis");
  if (!prompt.trim()) return place.replaceChildren();
  const body = { prompt, negative_prompt: $("#negative_prompt").value };
  if ($("#model").value) body.model = $("#model").value;
  try {
    const answer = await call("POST", "/v1/prompts/analyze", body);
    if (asked !== analysisAsked) return;
    place.replaceChildren(
      h("p", { class: "weights" }, ...weights(answer.prompt)),
      h("ul", { class: "counts" }, ...counts(answer.prompt, answer.encoders)),
      answer.truncated ? h("p", { class: "warn" }, `${answer.truncated} tokens would be cut`) : "",
    );
    $("#negative_prompt-analysis").replaceChildren(h("ul", { class: "counts" }, ...counts(answer.negative_prompt, answer.encoders)));
  } catch (error) {
    if (asked !== analysisAsked) return;
    place.replaceChildren(h("p", { class: "warn" }, `The model cannot read this prompt: ${error.message}`));
  }
}

function analyzeSoon() {
  clearTimeout(analysisTimer);
  analysisTimer = setTimeout(analyze, 400);
}

/** The models of GET /v1/models in the Model field, with their family and native size. */
export async function loadModels() {
  const select = $("#model");
  const kept = select.value;
  models = (await call("GET", "/v1/models")).data;
  select.replaceChildren(
    h("option", { value: "" }, "the stack's default"),
    ...models.map((model) => h("option", { value: model.id }, `${model.id} (${model.family}, ${model.native_size})`)),
  );
  select.value = models.some((model) => model.id === kept) ? kept : "";
  showNativeSize();
  return models;
}

function showNativeSize() {
  const native = models.find((model) => model.id === $("#model").value) ?? models[0];
  $("#size").placeholder = native ? `${native.native_size} (native)` : "";
}

/** The LoRAs of GET /v1/loras, each ready one a checkbox with its weight. */
export async function loadLoras() {
  const ready = (await call("GET", "/v1/loras")).data.filter((lora) => lora.status === "ready");
  $("#loras").hidden = ready.length === 0;
  $("#loras-list").replaceChildren(
    ...ready.map((lora, index) =>
      h(
        "div",
        { class: "lora" },
        h("input", { type: "checkbox", id: `lora-${index}`, value: lora.name, "data-index": index }),
        h("label", { for: `lora-${index}` }, `${lora.name} (${lora.model})`),
        h("label", { for: `lora-scale-${index}`, class: "visually-hidden" }, `Weight of ${lora.name}`),
        h("input", { id: `lora-scale-${index}`, type: "number", step: "0.1", min: "-4", max: "4", value: "1" }),
      ),
    ),
  );
  return ready;
}

/** `characters` as the choices of select `id` (its field shown only when there are some), its choice kept. */
function choose(id, characters, label) {
  const select = $(`#${id}`);
  const kept = select.value;
  $(`#${id}-field`).hidden = characters.length === 0;
  const named = characters.map((character) => h("option", { value: character.name }, label(character)));
  select.replaceChildren(h("option", { value: "" }, "none"), ...named);
  select.value = characters.some((character) => character.name === kept) ? kept : "";
}

/** The characters of GET /v1/characters (the key's own and the shared ones): to draw, and those with a face to keep
 * (a model's IP-Adapter FaceID draws it), for Draw and for Video. */
export async function loadCharacters() {
  const found = (await call("GET", "/v1/characters")).data;
  for (const prefix of ["", "video-"]) {
    choose(`${prefix}character`, found, (character) => `${character.name} (${character.model})`);
    choose(`${prefix}identity`, found.filter((character) => character.face), (character) => character.name);
  }
  return found;
}

/** Wire the Draw section to `context` (the key's scopes: {jobs, admin}). */
export function setUp(context) {
  studio = context;
  const form = $("#draw-form");
  form.addEventListener("submit", draw);
  form.addEventListener("input", updateCall);
  form.addEventListener("change", updateCall);
  $("#cancel-button").addEventListener("click", cancel);
  for (const id of ["prompt", "negative_prompt", "model"]) $(`#${id}`).addEventListener("input", analyzeSoon);
  $("#model").addEventListener("change", showNativeSize);
  imagesIn.setUp();
  $("#random-seed").addEventListener("click", () => useSeed(crypto.getRandomValues(new Uint32Array(1))[0] >>> 1));
  updateCall();
}

/** Refresh what depends on the key: models, LoRAs, the analysis. */
export async function refresh() {
  await loadModels();
  await loadLoras().catch(() => ($("#loras").hidden = true));
  await loadCharacters().catch(() => {
    for (const id of ["character", "identity", "video-character", "video-identity"]) $(`#${id}-field`).hidden = true;
  });
  await imagesIn.loadFinishing().catch(() => {});
  updateCall();
  analyzeSoon();
}
