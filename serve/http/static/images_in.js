// Draw's images and finishing: an input image with a mask painted on it, a reference, upscale, faces, best-of.

import { call } from "./api.js";
import { $, dataUrl, fileBase64, h, numberOf } from "./dom.js";

const BRUSH = 0.08; // the brush's width, as a share of the image's longer side
const state = { image: null, reference: null, painted: false }; // base64 of the chosen files; whether a mask is

/** The body's fields these controls set (none when left alone). */
export function imageFields() {
  const body = {};
  if (state.image) {
    body.image = [state.image];
    if (state.painted) body.mask = maskBase64();
    const strength = numberOf($("#strength").value);
    if (strength !== undefined) body.strength = strength;
  }
  if (state.reference) {
    body.ip_adapter_image = state.reference;
    const scale = numberOf($("#ip_adapter_scale").value);
    if (scale !== undefined) body.ip_adapter_scale = scale;
  }
  if ($("#upscale").value) body.upscale = { upscaler: $("#upscale").value };
  if ($("#restore_faces").value) body.restore_faces = { restorer: $("#restore_faces").value };
  const candidates = numberOf($("#candidates").value);
  if (candidates !== undefined && candidates !== 1) body.candidates = candidates;
  if (candidates > 1) body.best_of = $("#best_of").value;
  if ($("#scores").checked) body.scores = true;
  return body;
}

/** The mask as the API reads it: the image's size, opaque white, fully transparent where it was painted. */
function maskBase64() {
  const paint = $("#mask");
  const mask = h("canvas", { width: paint.width, height: paint.height });
  const context = mask.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, mask.width, mask.height);
  context.globalCompositeOperation = "destination-out";
  context.drawImage(paint, 0, 0);
  return mask.toDataURL("image/png").split(",", 2)[1];
}

/** Use base64 image bytes as the input image: shown under a blank mask to paint on. */
export function useAsInput(b64, type = "image/png") {
  const picture = new Image();
  picture.onload = () => {
    state.image = b64;
    state.painted = false;
    const paint = $("#mask");
    paint.width = picture.naturalWidth;
    paint.height = picture.naturalHeight;
    paint.style.backgroundImage = `url("${picture.src}")`;
    $("#mask-field").hidden = false;
    $("#image-name").textContent = `${picture.naturalWidth}x${picture.naturalHeight}`;
    $("#draw-form").dispatchEvent(new Event("change"));
  };
  picture.src = dataUrl(b64, type);
}

function clearInput() {
  state.image = null;
  state.painted = false;
  $("#image").value = "";
  $("#image-name").textContent = "";
  $("#mask-field").hidden = true;
  $("#draw-form").dispatchEvent(new Event("change"));
}

function clearMask() {
  const paint = $("#mask");
  paint.getContext("2d").clearRect(0, 0, paint.width, paint.height);
  state.painted = false;
  $("#draw-form").dispatchEvent(new Event("change"));
}

/** Painting on the mask canvas with a pointer (mouse, pen or finger), in the image's own pixels. */
function setUpPainting() {
  const paint = $("#mask");
  let down = false;
  const at = (event) => {
    const box = paint.getBoundingClientRect();
    return [((event.clientX - box.left) * paint.width) / box.width, ((event.clientY - box.top) * paint.height) / box.height];
  };
  const dab = (event) => {
    const context = paint.getContext("2d");
    const [x, y] = at(event);
    context.fillStyle = "rgba(220, 40, 40, 1)";
    context.beginPath();
    context.arc(x, y, (BRUSH * Math.max(paint.width, paint.height)) / 2, 0, 2 * Math.PI);
    context.fill();
    state.painted = true;
  };
  paint.addEventListener("pointerdown", (event) => {
    down = true;
    paint.setPointerCapture(event.pointerId);
    dab(event);
  });
  paint.addEventListener("pointermove", (event) => down && dab(event));
  paint.addEventListener("pointerup", () => {
    down = false;
    $("#draw-form").dispatchEvent(new Event("change"));
  });
}

/** The stack's upscalers and face restorers (GET /v1/upscalers), the ready ones offered. */
export async function loadFinishing() {
  const listed = await call("GET", "/v1/upscalers");
  const ready = (entries) => (entries ?? []).filter((entry) => entry.status === "ready").map((entry) => entry.name);
  for (const [id, names] of [["upscale", ready(listed.data)], ["restore_faces", ready(listed.face_restorers)]]) {
    const kept = $(`#${id}`).value;
    $(`#${id}`).replaceChildren(h("option", { value: "" }, "none"), ...names.map((name) => h("option", { value: name }, name)));
    $(`#${id}`).value = names.includes(kept) ? kept : "";
  }
}

/** Wire the controls: each change is the form's (its call is shown again). */
export function setUp() {
  $("#image").addEventListener("change", async () => {
    const file = $("#image").files[0];
    if (file) useAsInput(await fileBase64(file), file.type);
  });
  $("#ip_adapter_image").addEventListener("change", async () => {
    const file = $("#ip_adapter_image").files[0];
    state.reference = file ? await fileBase64(file) : null;
    $("#draw-form").dispatchEvent(new Event("change"));
  });
  $("#image-clear").addEventListener("click", clearInput);
  $("#mask-clear").addEventListener("click", clearMask);
  setUpPainting();
}
