// History: the kept images (GET /v1/images, paged) with their records; rerun, use seed, download, compare and rate.

import { call } from "./api.js";
import { curlJson, feedbackCalls, showCalls } from "./calls.js";
import { $, dataUrl, fileBase64, h, imageType } from "./dom.js";
import { useRecord, useSeed } from "./draw.js";
import { useAsInput } from "./images_in.js";

const PAGE = 12;
let last = null; // the last id shown: the next page starts after it
let chosen = []; // up to two kept images to compare: {id, url, prompt}
let showTab = () => {};

function ownUrl(url) {
  const parsed = new URL(url, location.origin);
  return parsed.pathname + parsed.search; // the stack's signed URL, on this page's origin
}

function describe(record) {
  if (!record) return "no record (generated with metadata none)";
  return `seed ${record.seed} · ${record.size} · ${record.steps} steps · ${record.sampler} · guidance ${record.guidance_scale} · ${record.model}`;
}

async function rerun(item, where) {
  const body = { image_id: item.id };
  showCalls($("#history-call"), [["curl", curlJson("/v1/images/rerun", body)]]);
  where.replaceChildren(h("p", { role: "status" }, "rerunning"));
  try {
    const answer = await call("POST", "/v1/images/rerun", body);
    const again = answer.data[0];
    const changed = answer.changed?.length ? `changed: ${answer.changed.join(", ")}` : "nothing changed";
    where.replaceChildren(
      h("img", { src: dataUrl(again.b64_json, imageType(again.b64_json)), alt: item.record?.prompt ?? "rerun", class: "rerun" }),
      h("p", {}, `rerun of ${answer.rerun_of}: ${changed}`),
    );
  } catch (error) {
    where.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
  }
}

function choose(item, box) {
  if (box.checked) chosen = [...chosen, item].slice(-2);
  else chosen = chosen.filter((other) => other.id !== item.id);
  for (const other of document.querySelectorAll("#history-list input.compare")) other.checked = chosen.some((c) => c.id === other.value);
  showCompare();
}

async function rate(item, rating, where) {
  const body = { image_id: item.id, rating };
  showCalls($("#history-call"), feedbackCalls(body));
  try {
    const answer = await call("POST", "/v1/feedback", body);
    where.textContent = `rated ${rating}: reward ${answer.reward} for ${answer.model}${answer.experiment ? ` in ${answer.experiment}` : ""}`;
  } catch (error) {
    where.textContent = error.message;
  }
}

function showCompare() {
  const place = $("#compare");
  place.hidden = chosen.length < 2;
  place.replaceChildren(
    h("h3", {}, "Compare"),
    h(
      "div",
      { class: "pair" },
      ...chosen.map((item, index) => {
        const status = h("p", { role: "status" });
        const select = h("select", { id: `rating-${index}` }, ...[5, 4, 3, 2, 1].map((n) => h("option", { value: n }, `${n}`)));
        select.addEventListener("change", () => showCalls($("#history-call"), feedbackCalls({ image_id: item.id, rating: Number(select.value) })));
        return h(
          "figure",
          { class: "picture" },
          h("img", { src: ownUrl(item.url), alt: item.record?.prompt ?? item.id }),
          h("figcaption", {}, describe(item.record)),
          h("label", { for: `rating-${index}` }, "Rating (1-5) "),
          select,
          " ",
          h("button", { type: "button", onclick: () => rate(item, Number(select.value), status) }, "Send rating"),
          status,
        );
      }),
    ),
  );
}

/** A kept image as the Draw form's input image. */
async function asInput(item) {
  const blob = await (await fetch(ownUrl(item.url))).blob();
  useAsInput(await fileBase64(blob), blob.type || "image/png");
}

function card(item) {
  const prompt = item.record?.prompt ?? "";
  const below = h("div", { class: "rerun-result" });
  const box = h("input", { type: "checkbox", class: "compare", id: `compare-${item.id}`, value: item.id });
  box.addEventListener("change", () => choose(item, box));
  return h(
    "li",
    { class: "card" },
    h("img", { src: ownUrl(item.url), alt: prompt || item.id, loading: "lazy" }),
    h("p", { class: "prompt" }, prompt),
    h("p", { class: "record" }, describe(item.record)),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", onclick: () => rerun(item, below) }, "Rerun"),
      item.record ? h("button", { type: "button", onclick: () => (useSeed(item.record.seed), showTab("draw")) }, "Use seed") : "",
      item.record ? h("button", { type: "button", onclick: () => (useRecord(item.record), showTab("draw")) }, "Use settings") : "",
      h("button", { type: "button", onclick: () => asInput(item).then(() => showTab("draw")) }, "Use as input"),
      h("a", { href: ownUrl(item.url), download: `${item.id}.png`, class: "button" }, "Download"),
      h("span", {}, box, h("label", { for: box.id }, "Compare")),
    ),
    below,
  );
}

/** The first page of the history (`more`: the page after the one shown). */
export async function load(more = false) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (more && last) query.set("after", last);
  $("#history-error").textContent = "";
  try {
    const page = await call("GET", `/v1/images?${query}`);
    const cards = page.data.map(card);
    if (more) $("#history-list").append(...cards);
    else $("#history-list").replaceChildren(...cards);
    last = page.data.at(-1)?.id ?? last;
    $("#history-more").hidden = !page.has_more;
    if (!more && page.data.length === 0) $("#history-list").replaceChildren(h("li", {}, "No kept images yet: draw one."));
  } catch (error) {
    $("#history-error").textContent = error.message;
  }
}

/** Wire the History section (`tab`: shows a section by name). */
export function setUp(tab) {
  showTab = tab;
  $("#history-refresh").addEventListener("click", () => load());
  $("#history-more").addEventListener("click", () => load(true));
}
