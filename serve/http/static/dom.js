// Building the page's elements: every string goes in as text, never as HTML.

/** An element: `props` become attributes (`on*`: listeners), `children` strings (as text) or nodes. */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** The first element matching `selector`. */
export const $ = (selector, root = document) => root.querySelector(selector);

/** A PNG (or any image) answered as base64, as a data: URL an <img> shows. */
export function dataUrl(b64, type = "image/png") {
  return `data:${type};base64,${b64}`;
}

/** The media type of base64 image bytes, by their first bytes. */
export function imageType(b64) {
  if (b64.startsWith("/9j/")) return "image/jpeg";
  if (b64.startsWith("UklGR")) return "image/webp";
  if (b64.startsWith("PD94") || b64.startsWith("PHN2")) return "image/svg+xml";
  return "image/png";
}

/** A file's bytes as base64 (no data: prefix). */
export function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** A link that downloads `blob` as `name`. */
export function downloadLink(text, blob, name) {
  return h("a", { href: URL.createObjectURL(blob), download: name, class: "button" }, text);
}

/** Base64 to a Blob of `type`. */
export function b64Blob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

/** A form field's number (empty: undefined); text that is no number passes as it is, for the API to name. */
export function numberOf(text) {
  const trimmed = text.trim();
  if (trimmed === "") return undefined;
  return /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(trimmed) ? Number(trimmed) : trimmed;
}
