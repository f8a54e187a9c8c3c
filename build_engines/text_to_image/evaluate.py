"""``easel eval generate``: does the default model draw what the prompt asks, on colour x icon pairings it never saw?

Each held-out pairing (:func:`~build_engines.text_to_image.icons.held_out`) is generated with several seeds through
the served pipeline's own loop (the built ONNX engines in process, the API's default sampler settings), then judged:

- **colour**: the majority palette colour (nearest in CIELAB) over the image's inked pixels equals the prompt's colour;
- **icon**: a small CNN trained here on the real rasterised icons (shape only: it sees how far each pixel is from
  white, not its hue; shifted, scaled and blurred copies) names the prompt's icon, top-1.

Writes ``generate_eval.json`` (every sample), ``generate_eval.md`` (the per-class table) and ``generate_eval.png``
(reference | samples for every pairing, failures framed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from build_engines.text_to_image.icons import COLOURS, ICON_BOX, ICONS, IMAGE_SIZE, Pairing, held_out, render
from serve.protocol.schema import Sampling
from serve.text_to_image.engine_folder import EngineFolder

logger = logging.getLogger(__name__)

SEED = 7
INK_THRESHOLD = 0.35  # 1 - min(rgb)/255 above this: the pixel is drawn on, not background


def ink(images: np.ndarray) -> np.ndarray:
    """How far each pixel is from white, in [0, 1] (hue-blind): uint8 NHWC -> float NHW."""
    return 1.0 - images.min(axis=-1).astype(np.float32) / 255.0


def dominant_colour(image: np.ndarray) -> str | None:
    """The palette colour most inked pixels of ``image`` are nearest to (CIELAB), or None if nothing is drawn."""
    from skimage.color import rgb2lab

    pixels = image[ink(image[None])[0] > INK_THRESHOLD]
    if len(pixels) < 16:
        return None
    names = list(COLOURS)
    palette = rgb2lab(np.asarray([COLOURS[n] for n in names], dtype=np.float64)[None] / 255.0)[0]
    lab = rgb2lab(pixels[None].astype(np.float64) / 255.0)[0]
    nearest = np.argmin(((lab[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    return names[Counter(nearest.tolist()).most_common(1)[0][0]]


class IconClassifier(torch.nn.Module):
    """A small CNN over an ink map (pooled to 32x32) -> one logit per icon."""

    def __init__(self, classes: int = len(ICONS)) -> None:
        super().__init__()
        layers, width = [torch.nn.AvgPool2d(IMAGE_SIZE // 32)], 1
        for out in (16, 32, 64):
            layers += [torch.nn.Conv2d(width, out, 3, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
            layers += [torch.nn.Conv2d(out, out, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            width = out
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(width * 4 * 4, classes)

    def forward(self, ink_maps: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of ink maps [N, H, W]."""
        return self.head(self.features(ink_maps[:, None]).flatten(1))


def _augmented_icons(copies: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` renders of every icon: random palette colour, box 0.8-1.1 x ICON_BOX, shifted, sometimes blurred."""
    from PIL import Image, ImageFilter

    images, labels = [], []
    colours = list(COLOURS.values())
    for label, icon in enumerate(ICONS):
        for _ in range(copies):
            box = int(ICON_BOX * rng.uniform(0.8, 1.1))
            image = render(icon, colours[rng.integers(len(colours))], size=IMAGE_SIZE, box=box)
            dx, dy = rng.integers(-4, 5, size=2)
            image = np.roll(image, (dy, dx), axis=(0, 1))
            if rng.random() < 0.5:
                image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))))
            images.append(image)
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def train_classifier(copies: int = 24, epochs: int = 15) -> tuple[IconClassifier, float]:
    """Train the judge on real rasterised icons; returns it and its top-1 accuracy on fresh augmented renders."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    images, labels = _augmented_icons(copies, rng)
    inputs, targets = torch.from_numpy(ink(images)), torch.from_numpy(labels)
    model = IconClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(inputs), generator=generator).split(32):
            loss = F.cross_entropy(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        logger.info("icon classifier epoch %d/%d  loss %.3f", epoch + 1, epochs, loss.item())
    val_images, val_labels = _augmented_icons(4, np.random.default_rng(SEED + 1))
    accuracy = float((classify(model, val_images) == val_labels).mean())
    logger.info("icon classifier: %.1f %% top-1 on fresh augmented renders", 100 * accuracy)
    return model, accuracy


@torch.no_grad()
def classify(model: IconClassifier, images: np.ndarray) -> np.ndarray:
    """Predicted icon index for each uint8 NHWC image."""
    model.eval()
    return model(torch.from_numpy(ink(images))).argmax(1).numpy()


@dataclass(frozen=True)
class Sample:
    """One generated image and its verdicts."""

    colour: str
    icon: str
    seed: int
    prompt: str
    predicted_colour: str | None
    predicted_icon: str

    @property
    def colour_ok(self) -> bool:
        """The image's dominant colour is the prompt's."""
        return self.predicted_colour == self.colour

    @property
    def icon_ok(self) -> bool:
        """The classifier names the prompt's icon."""
        return self.predicted_icon == self.icon


@dataclass(frozen=True)
class GenerateSettings(Sampling):
    """How each image is generated: the API's sampling (its defaults), at the model's native size, ``seeds`` each."""

    seeds: int = 4


def generate_images(engines: EngineFolder, pairings: list[Pairing], settings: GenerateSettings) -> dict:
    """``{(pairing, seed): uint8 HWC image}`` through the serving loop on in-process ONNX Runtime engines.

    All generations run at once, their engine calls merged per step as a replica merges them.
    """
    from serve.text_to_image.generation import Generation, SamplingParams
    from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
    from serve.text_to_image.pipeline import TextToImagePipeline
    from serve.triton.coalesce import CoalescingRunner

    pipeline = TextToImagePipeline(engines, CoalescingRunner(OnnxRuntimeRunner(engines)))
    size = pipeline.dims.native_size
    jobs = [
        (
            pairing,
            seed,
            Generation(
                SamplingParams(
                    pairing.caption(),
                    "",
                    1,
                    size,
                    size,
                    settings.steps,
                    settings.guidance_scale,
                    seed,
                    settings.scheduler,
                )
            ),
        )
        for pairing in pairings
        for seed in range(settings.seeds)
    ]

    async def run_all() -> list:
        return await asyncio.gather(*(pipeline.generate(job) for _, _, job in jobs))

    results = asyncio.run(run_all())
    return {(pairing, seed): result.images[0] for (pairing, seed, _), result in zip(jobs, results, strict=True)}


def evaluate(
    model_dir: Path,
    out_dir: Path,
    settings: GenerateSettings | None = None,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
) -> dict:
    """Generate every held-out pairing, judge it, and write the JSON, table and grid into ``out_dir``.

    With another ``runtime`` or ``precision`` than ONNX Runtime fp32, the same images are also made on that one, and
    their PSNR and SSIM to them are reported (``to_fp32``).
    """
    from build_engines.text_to_image.build import build

    settings = settings or GenerateSettings()
    pairings = held_out()
    with tempfile.TemporaryDirectory() as repository:
        engines = build(model_dir, repository=Path(repository), runtime=runtime, precision=precision)
    logger.info("generating %d held-out pairings x %d seeds (%s %s)", len(pairings), settings.seeds, runtime, precision)
    images = generate_images(engines, pairings, settings)
    to_fp32 = None
    if (runtime, precision) != ("onnxruntime", "fp32"):
        reference = generate_images(build(model_dir, repository=None), pairings, settings)
        to_fp32 = similarity(images, reference)
    classifier, classifier_accuracy = train_classifier()
    keys = list(images)
    stacked = np.stack([images[k] for k in keys])
    icons = classify(classifier, stacked)
    samples = [
        Sample(p.colour, p.icon, seed, p.caption(), dominant_colour(images[p, seed]), ICONS[icons[i]])
        for i, (p, seed) in enumerate(keys)
    ]
    report = {
        "model": str(model_dir),
        "runtime": runtime,
        "precision": precision,
        "to_fp32": to_fp32,
        "settings": asdict(settings),
        "size": int(stacked.shape[1]),
        "classifier_accuracy_on_real_icons": classifier_accuracy,
        "colour_accuracy": float(np.mean([s.colour_ok for s in samples])),
        "icon_accuracy": float(np.mean([s.icon_ok for s in samples])),
        "samples": [asdict(s) | {"colour_ok": s.colour_ok, "icon_ok": s.icon_ok} for s in samples],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "generate_eval.json").write_text(json.dumps(report, indent=1))
    (out_dir / "generate_eval.md").write_text(table(report))
    grid(pairings, images, samples, settings.seeds).save(out_dir / "generate_eval.png")
    return report


def similarity(images: dict, reference: dict) -> dict[str, float]:
    """Mean PSNR (dB, identical images counted at 100) and SSIM of ``images`` to ``reference``, key by key."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnrs, ssims = [], []
    for key, want in reference.items():
        got = images[key]
        psnrs.append(100.0 if np.array_equal(got, want) else peak_signal_noise_ratio(want, got, data_range=255))
        ssims.append(structural_similarity(want, got, channel_axis=-1, data_range=255))
    return {"psnr_db": round(float(np.mean(psnrs)), 2), "ssim": round(float(np.mean(ssims)), 4)}


def table(report: dict) -> str:
    """The per-class markdown table: each held-out pairing, how often its colour and icon came out right."""
    by_pairing: dict[tuple[str, str], list[dict]] = {}
    for sample in report["samples"]:
        by_pairing.setdefault((sample["colour"], sample["icon"]), []).append(sample)
    seeds = report["settings"]["seeds"]
    lines = [
        f"Held-out pairings: {len(by_pairing)}, {seeds} seeds each, {report['size']}x{report['size']}, "
        f"{report['settings']['scheduler']} {report['settings']['steps']} steps, "
        f"guidance {report['settings']['guidance_scale']}.",
        "",
        f"**Colour accuracy {100 * report['colour_accuracy']:.1f} %, recognisability (top-1) "
        f"{100 * report['icon_accuracy']:.1f} %** (the classifier scores "
        f"{100 * report['classifier_accuracy_on_real_icons']:.1f} % on real icons).",
        "",
        *_runtime_lines(report),
        "| icon | held-out colour | icon right | colour right | classifier said instead | colour seen instead |",
        "|---|---|---|---|---|---|",
    ]
    for (colour, icon), samples in sorted(by_pairing.items(), key=lambda item: item[0][1]):
        wrong_icons = Counter(s["predicted_icon"] for s in samples if not s["icon_ok"])
        wrong_colours = Counter(str(s["predicted_colour"]) for s in samples if not s["colour_ok"])
        lines.append(
            f"| {icon} | {colour} | {sum(s['icon_ok'] for s in samples)}/{len(samples)} | "
            f"{sum(s['colour_ok'] for s in samples)}/{len(samples)} | "
            f"{', '.join(f'{k} x{v}' for k, v in wrong_icons.most_common()) or ''} | "
            f"{', '.join(f'{k} x{v}' for k, v in wrong_colours.most_common()) or ''} |"
        )
    return "\n".join(lines) + "\n"


def _runtime_lines(report: dict) -> list[str]:
    """The engines' runtime and precision, and their images' similarity to ONNX Runtime fp32's (when not that)."""
    to_fp32 = report.get("to_fp32")
    if not to_fp32:
        return []
    return [
        f"Engines: {report['runtime']} {report['precision']}; to ONNX Runtime fp32's images: PSNR "
        f"{to_fp32['psnr_db']:.2f} dB, SSIM {to_fp32['ssim']:.4f}.",
        "",
    ]


def grid(pairings: list[Pairing], images: dict, samples: list[Sample], seeds: int, columns: int = 5):
    """Per pairing: the real icon, then each sample framed red (wrong icon), orange (wrong colour) or not at all."""
    from PIL import Image, ImageDraw

    verdicts = {(s.colour, s.icon, s.seed): s for s in samples}
    cell, label = IMAGE_SIZE + 4, 12
    tile_w, tile_h = cell * (seeds + 1) + 8, cell + label
    rows = -(-len(pairings) // columns)
    canvas = Image.new("RGB", (columns * tile_w, rows * tile_h), "white")
    draw = ImageDraw.Draw(canvas)
    for index, pairing in enumerate(pairings):
        x0, y0 = (index % columns) * tile_w, (index // columns) * tile_h
        canvas.paste(Image.fromarray(render(pairing.icon, COLOURS[pairing.colour])), (x0 + 2, y0 + 2))
        for seed in range(seeds):
            x = x0 + cell * (seed + 1) + 4
            verdict = verdicts[pairing.colour, pairing.icon, seed]
            frame = None if verdict.icon_ok and verdict.colour_ok else "red" if not verdict.icon_ok else "orange"
            if frame:
                draw.rectangle((x, y0, x + cell - 1, y0 + cell - 1), outline=frame, width=2)
            canvas.paste(Image.fromarray(images[pairing, seed]), (x + 2, y0 + 2))
        draw.text((x0 + 2, y0 + cell), f"{pairing.colour} {pairing.icon}", fill="black")
    return canvas
