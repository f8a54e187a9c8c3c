// Faces: one or two images analyzed by the stack's face models, each face's box and landmarks drawn over its image,
// and the cosine of the two images' first faces (their embeddings are unit length: the dot product).

import { call } from "./api.js";
import { curlJson, showCalls } from "./calls.js";
import { $, fileBase64, h, numberOf } from "./dom.js";
import { showError } from "./draw.js";

/** A mark over the picture, placed in percent of its size (CSSOM, not a style attribute: the page's policy). */
function mark(className, place) {
  const element = h("div", { class: className });
  for (const [name, value] of Object.entries(place)) element.style[name] = `${value}%`;
  return element;
}

/** The image with each face's box and 5 landmarks drawn over it, and the faces listed. */
function shown(file, answer, size) {
  const [width, height] = size.split("x").map(Number);
  const marks = answer.data.flatMap((face) => {
    const [x1, y1, x2, y2] = face.box;
    const box = { left: (100 * x1) / width, top: (100 * y1) / height };
    Object.assign(box, { width: (100 * (x2 - x1)) / width, height: (100 * (y2 - y1)) / height });
    const points = face.landmarks.map(([x, y]) => mark("face-point", { left: (100 * x) / width, top: (100 * y) / height }));
    return [mark("face-box", box), ...points];
  });
  const picture = h("div", { class: "faces-picture" }, h("img", { src: URL.createObjectURL(file), alt: file.name }), ...marks);
  const rows = answer.data.map((face, i) =>
    h("li", {}, `face ${i + 1}: score ${face.score.toFixed(3)}, box ${face.box.map((v) => v.toFixed(1)).join(", ")}`),
  );
  return [picture, h("p", {}, `${answer.data.length} face(s) found`), h("ol", { class: "faces-list" }, ...rows)];
}

function body(image) {
  return { image, max_faces: numberOf($("#max_faces").value) };
}

function updateCall() {
  showCalls($("#faces-call"), [["curl", curlJson("/v1/faces/analyze", body("<base64 of the image>"))]]);
}

async function analyzed(input, target) {
  const file = input.files[0];
  if (!file) return null;
  const answer = await call("POST", "/v1/faces/analyze", body(await fileBase64(file)));
  target.replaceChildren(...shown(file, answer, answer.size));
  return answer;
}

async function analyze(event) {
  event.preventDefault();
  const form = $("#faces-form");
  for (const error of form.querySelectorAll(".error")) error.textContent = "";
  $("#faces-cosine").textContent = "";
  if (!$("#face-a").files[0]) {
    $("#face-a-error").textContent = "Choose an image first.";
    return;
  }
  $("#faces-status").textContent = "analyzing";
  let side = "a";
  try {
    const a = await analyzed($("#face-a"), $("#faces-a"));
    side = "b";
    const b = await analyzed($("#face-b"), $("#faces-b"));
    if (b && a.data.length && b.data.length) {
      const cosine = a.data[0].embedding.reduce((sum, value, i) => sum + value * b.data[0].embedding[i], 0);
      $("#faces-cosine").textContent = `cosine of A's first face and B's: ${cosine.toFixed(4)}`;
    }
    $("#faces-status").textContent = "done";
  } catch (error) {
    $("#faces-status").textContent = "refused";
    const named = error.param === "image" ? Object.assign(error, { param: `face-${side}` }) : error;
    showError(form, named, $("#faces-error"));
  }
}

/** Wire the Faces section (its tab is shown when the stack serves face models: `served`). */
export function setUp() {
  $("#faces-form").addEventListener("submit", analyze);
  $("#max_faces").addEventListener("input", updateCall);
  updateCall();
}

/** Whether the stack serves face models (GET /v1/upscalers' `faces`, one ready). */
export async function served() {
  try {
    const listed = await call("GET", "/v1/upscalers");
    return (listed.faces ?? []).some((entry) => entry.status === "ready");
  } catch {
    return false;
  }
}
