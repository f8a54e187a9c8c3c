"""What made an image, carried in its PNG: AUTOMATIC1111's ``parameters`` text and a JSON chunk with everything.

Both are iTXt chunks (UTF-8: a prompt may be any text) put right after the PNG's header, so a reader finds them
without decoding pixels (Pillow: ``Image.open(f).info["parameters"]``, ``.info["easel"]``). The pixels are
untouched: the bytes differ from the plain PNG only by the two chunks.
"""

from __future__ import annotations

import json
import struct
import zlib

PARAMETERS = "parameters"
"""AUTOMATIC1111's chunk: the prompt, ``Negative prompt: ...``, then ``Key: value`` pairs on one line."""
RECORD = "easel"
"""The JSON chunk: the whole generation record."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_AFTER_HEADER = len(PNG_SIGNATURE) + 4 + 4 + 13 + 4  # IHDR: length, type, 13 bytes, CRC


def _quoted(value) -> str:
    """A value as AUTOMATIC1111 writes one: quoted (JSON) when it holds a comma, colon or quote."""
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def parameters_line(record: dict) -> str:
    """AUTOMATIC1111's ``parameters`` text of a generation record (:mod:`serve.serving.results` makes them)."""
    pairs = {
        "Steps": record.get("steps"),
        "Sampler": record.get("sampler"),
        "CFG scale": record.get("guidance_scale"),
        "Seed": record.get("seed"),
        "Size": record.get("size"),
        "Model hash": (record.get("model_hash") or "")[:10] or None,
        "Model": record.get("model"),
        "Batch size": record.get("n") if record.get("n", 1) > 1 else None,
        "Batch pos": record.get("index") if record.get("n", 1) > 1 else None,
        "Denoising strength": record.get("strength"),
        "Lora hashes": ", ".join(f"{a['name']}: {a['hash'][:12]}" for a in record.get("loras", [])) or None,
        "Hires upscaler": (record.get("upscale") or {}).get("upscaler"),
        "Face restoration": (record.get("restore_faces") or {}).get("restorer"),
        "Version": f"easel {record.get('easel_version')}",
    }
    for index, control in enumerate(record.get("controlnets", [])):
        pairs[f"ControlNet {index}"] = f"Model: {control['name']}, Weight: {control['scale']}"
    line = ", ".join(f"{key}: {_quoted(value)}" for key, value in pairs.items() if value not in (None, ""))
    negative = record.get("negative_prompt")
    return "\n".join([record.get("prompt", ""), *([f"Negative prompt: {negative}"] if negative else []), line])


def _itxt(keyword: str, text: str) -> bytes:
    """One uncompressed iTXt chunk (PNG 1.2, 11.3.4.5): length, type, data, CRC."""
    data = keyword.encode("latin-1") + b"\x00\x00\x00" + b"\x00" + b"\x00" + text.encode()
    return struct.pack(">I", len(data)) + b"iTXt" + data + struct.pack(">I", zlib.crc32(b"iTXt" + data))


def with_record(png: bytes, record: dict) -> bytes:
    """``png`` carrying ``record``: its ``parameters`` line and its JSON, the pixels' chunks unchanged."""
    if not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    chunks = _itxt(PARAMETERS, parameters_line(record)) + _itxt(RECORD, json.dumps(record, sort_keys=True))
    return png[:_AFTER_HEADER] + chunks + png[_AFTER_HEADER:]
