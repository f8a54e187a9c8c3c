// Vectorize: a raster dropped or chosen, a tier picked, its SVG beside it with its SSIM, bytes and parameters.

import { call } from "./api.js";
import { curlForm, showCalls, vectorizeGrpc } from "./calls.js";
import { $, dataUrl, downloadLink, fileBase64, h } from "./dom.js";
import { showError } from "./draw.js";

let picked = null; // the File to vectorize

function pick(file) {
  if (!file) return;
  picked = file;
  $("#vectorize-name").textContent = file.name;
  $("#vectorize-raster").replaceChildren(h("img", { src: URL.createObjectURL(file), alt: file.name }));
  updateCall();
}

function updateCall() {
  const fields = { file: `@${picked?.name ?? "image.png"}`, tier: $("#tier").value, validate: "true" };
  showCalls($("#vectorize-call"), [
    ["curl", `${curlForm("/v1/vectorize", fields)} \\\n  -H 'Accept: application/json'`],
    ["Python (gRPC)", vectorizeGrpc(picked?.name ?? "image.png", $("#tier").value)],
  ]);
}

function facts(answer) {
  const rows = [
    ["tier", `${answer.tier} (asked ${answer.requested_tier}${answer.why ? `: ${answer.why}` : ""})`],
    ["SSIM", answer.ssim ?? "not measured"],
    ["bytes", answer.bytes],
    ["paths", answer.paths],
    ["image class", answer.image_class],
    ["parameters", JSON.stringify(answer.parameters)],
    ["time", `${answer.timings_ms?.total ?? "?"} ms`],
  ];
  return h("dl", { class: "facts" }, ...rows.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, String(value))]));
}

async function vectorize(event) {
  event.preventDefault();
  const form = $("#vectorize-form");
  for (const error of form.querySelectorAll(".error")) error.textContent = "";
  if (!picked) {
    $("#file-error").textContent = "Choose or drop an image first.";
    return;
  }
  $("#vectorize-status").textContent = "vectorizing";
  try {
    const body = { image: await fileBase64(picked), tier: $("#tier").value, validate: true };
    const answer = await call("POST", "/v1/vectorize", body);
    const svg = new Blob([answer.svg], { type: "image/svg+xml" });
    const name = `${picked.name.replace(/\.[^.]*$/, "")}.svg`;
    $("#vectorize-svg").replaceChildren(
      h("img", { src: dataUrl(btoa(unescape(encodeURIComponent(answer.svg))), "image/svg+xml"), alt: `SVG of ${picked.name}` }),
    );
    $("#vectorize-facts").replaceChildren(facts(answer), downloadLink("Download SVG", svg, name));
    $("#vectorize-status").textContent = "done";
  } catch (error) {
    $("#vectorize-status").textContent = "refused";
    showError(form, error.param === "image" ? Object.assign(error, { param: "file" }) : error, $("#vectorize-error"));
  }
}

/** Wire the Vectorize section. */
export function setUp() {
  $("#vectorize-form").addEventListener("submit", vectorize);
  $("#file").addEventListener("change", () => pick($("#file").files[0]));
  $("#tier").addEventListener("change", updateCall);
  const zone = $("#drop");
  zone.addEventListener("dragover", (event) => (event.preventDefault(), zone.classList.add("over")));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    pick(event.dataTransfer.files[0]);
  });
  updateCall();
}
