"""The fast image check gives the full decode's verdicts: on the bad-record partition, and on images damaged the
subtle ways (bits flipped mid-scan, stray markers, cuts at many offsets, deflate data broken under a valid CRC).

Every file is checked by ``image_check.check_image`` (what prep runs) and by ``image_check.check_image_full`` (a
full decode of every image, what prep ran before): the outcome, the reason and the detail must be the same. The
comparison is also run against deliberately broken fast checks, which it must catch. No Spark: a few seconds.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from tasks.prep import image_check, prep_tasks
from tests.conftest import make_partition
from tests.support import partitions as parts

BOUNDS = image_check.Bounds(min_side=8, max_side=4096, max_bytes=2**24)
IMAGE_REASONS = {"empty", "not_an_image", "unsupported_format", "truncated", "corrupt", "too_small"}
"""The reasons of ``parts.add_defects`` that the image check gives (the others are about labels and listing)."""


def _picture(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth colour with discs and noise: JPEG data that is mostly entropy-coded detail, as photos are."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y, r = (int(v) for v in rng.integers(0, min(size), 3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, size=(size[1], size[0], 1), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert(mode)


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _jpegs() -> dict[str, bytes]:
    """Valid JPEGs of the kinds encoders write: chroma subsampled or not, progressive, grey, restart markers,
    sizes that are no multiple of the 8 or 16 pixel blocks."""
    return {
        "baseline-420": _encoded(_picture((160, 120), 1), "JPEG", quality=85),
        "baseline-444-odd": _encoded(_picture((131, 97), 2), "JPEG", quality=92, subsampling=0),
        "progressive": _encoded(_picture((144, 108), 3), "JPEG", quality=80, progressive=True),
        "grey": _encoded(_picture((120, 90), 4, "L"), "JPEG", quality=85),
        "restarts": _encoded(_picture((128, 96), 5), "JPEG", quality=85, restart_marker_rows=1),
    }


def _scan_start(jpeg: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the first SOS segment)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + struct.unpack(">H", jpeg[sos + 2:sos + 4])[0]


def damaged_jpegs() -> dict[str, bytes]:
    """Each valid JPEG, and variants of it: cut at 16 offsets (headers, scan data, just before and inside the
    end marker), one bit flipped at 12 places in the scan data, a byte set to 0xFF there, stray markers (an end
    of image, a restart, a start of frame) inserted mid-scan, and a run of bytes overwritten."""
    out = {}
    for name, data in _jpegs().items():
        out[name] = data
        start, n = _scan_start(data), len(data)
        cuts = [2, 20, start - 4, start] + [start + (n - start) * k // 10 for k in range(1, 10)] + [n - 7, n - 2,
                                                                                                   n - 1]
        for cut in cuts:
            out[f"{name}-cut-{cut}"] = data[:cut]
        for k in range(12):
            at = start + (n - 2 - start) * (2 * k + 1) // 24
            flipped = bytearray(data)
            flipped[at] ^= 1 << (k % 8)
            out[f"{name}-bit-{at}"] = bytes(flipped)
            if k % 3 == 0:
                ff = bytearray(data)
                ff[at] = 0xFF
                out[f"{name}-ff-{at}"] = bytes(ff)
        middle = start + (n - start) // 2
        for marker in (b"\xff\xd9", b"\xff\xd3", b"\xff\xc0\x00\x11", b"\xff\xda"):
            out[f"{name}-marker-{marker[1]:02x}"] = data[:middle] + marker + data[middle:]
        out[f"{name}-overwritten"] = data[:middle] + bytes(range(7, 7 + 40)) + data[middle + 40:]
    return out


def _chunk(cid: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + cid + body + struct.pack(">I", zlib.crc32(cid + body))


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos < len(png):
        length, cid = struct.unpack_from(">I4s", png, pos)
        out.append((cid, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _idat_stream(png: bytes) -> bytes:
    return b"".join(body for cid, body in _chunks(png) if cid == b"IDAT")


def _rebuilt(png: bytes, pixels: bytes | None = None, idat_size: int = 1 << 30,
             after_idat: list[tuple[bytes, bytes]] = ()) -> bytes:
    """The PNG with its chunks rewritten, valid checksums: ``pixels`` as the whole zlib stream of its IDAT data
    (split into chunks of ``idat_size``), and ``after_idat`` chunks between the last IDAT and IEND."""
    chunks = _chunks(png)
    stream = pixels if pixels is not None else _idat_stream(png)
    head = [c for c in chunks if c[0] not in (b"IDAT", b"IEND")]
    idat = [(b"IDAT", stream[i:i + idat_size]) for i in range(0, len(stream), idat_size)] or [(b"IDAT", b"")]
    return (png[:8] + b"".join(_chunk(*c) for c in head + idat + list(after_idat)) + _chunk(b"IEND", b""))


def damaged_pngs() -> dict[str, bytes]:
    """Valid PNGs of every colour type, and variants whose damage ``verify()`` cannot see because the chunk
    checksums are right: deflate data with a flipped byte, a stream cut short or too long, an unknown row
    filter, trailing data after the stream, split IDAT chunks, a chunk after IDAT; and some it can: cuts and
    flips under the old checksum."""
    out = {}
    for name, img in {"rgb": _picture((96, 72), 6), "rgba": _picture((64, 40), 7, "RGBA"),
                      "grey": _picture((50, 30), 8, "L"), "palette": _picture((70, 60), 9, "P"),
                      "grey-alpha": _picture((33, 20), 10, "LA")}.items():
        data = _encoded(img, "PNG")
        out[name] = data
        stream = _idat_stream(data)
        raw = zlib.decompress(stream)
        stride = len(raw) // img.size[1]
        for at in (2, len(stream) // 3, len(stream) // 2, len(stream) - 3):
            flipped = bytearray(stream)
            flipped[at] ^= 0x5A
            out[f"{name}-deflate-flip-{at}"] = _rebuilt(data, bytes(flipped))
        for cut in (len(stream) // 2, len(stream) - 4, len(stream) - 1):
            out[f"{name}-deflate-cut-{cut}"] = _rebuilt(data, stream[:cut])
        out[f"{name}-short-rows"] = _rebuilt(data, zlib.compress(raw[:-stride]))
        out[f"{name}-long-rows"] = _rebuilt(data, zlib.compress(raw + raw[:stride]))
        out[f"{name}-trailing-data"] = _rebuilt(data, stream + b"\x00junk")
        for row in (0, img.size[1] // 2, img.size[1] - 1):
            bad_filter = bytearray(raw)
            bad_filter[row * stride] = 7
            out[f"{name}-filter-7-row-{row}"] = _rebuilt(data, zlib.compress(bytes(bad_filter)))
        out[f"{name}-split-idat"] = _rebuilt(data, idat_size=97)
        out[f"{name}-text-after-idat"] = _rebuilt(data, after_idat=[(b"tEXt", b"Comment\x00after the pixels")])
        for cut in (len(data) // 3, len(data) - 20, len(data) - 12, len(data) - 1):
            out[f"{name}-cut-{cut}"] = data[:cut]
        middle = bytearray(data)
        middle[len(data) // 2] ^= 0x01
        out[f"{name}-bit-under-old-crc"] = bytes(middle)
    return out


def verdict(check, data: bytes) -> tuple:
    try:
        info = check(data, BOUNDS)
    except image_check.BadRecord as bad:
        return bad.reason, bad.detail
    return "valid", info


def differences(files: dict[str, bytes]) -> dict[str, tuple]:
    """``{name: (fast verdict, reference verdict)}`` of the files on which the two checks disagree."""
    out = {}
    for name, data in files.items():
        fast, full = verdict(image_check.check_image, data), verdict(image_check.check_image_full, data)
        if fast != full:
            out[name] = (fast, full)
    return out


@pytest.fixture(scope="module")
def damaged():
    return {**{f"jpeg/{k}": v for k, v in damaged_jpegs().items()},
            **{f"png/{k}": v for k, v in damaged_pngs().items()}}


def test_truncated_images_are_not_loaded_leniently():
    # With it set, PIL pads a truncated image with grey and both checks would pass it.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_damaged_images_get_the_same_verdict_reason_and_detail_as_a_full_decode(damaged):
    assert differences(damaged) == {}
    reasons = {name: verdict(image_check.check_image_full, data)[0] for name, data in damaged.items()}
    # The damage is of every kind the checks tell apart, not only harmless: otherwise the comparison proves little.
    for prefix in ("jpeg/", "png/"):
        found = {r for name, r in reasons.items() if name.startswith(prefix)}
        assert {"valid", "truncated", "corrupt"} <= found, (prefix, found)
    for name, data in _jpegs().items():
        assert reasons[f"jpeg/{name}"] == "valid"
        start, n = _scan_start(data), len(data)
        assert {reasons[f"jpeg/{name}-cut-{start + (n - start) * k // 10}"] for k in range(1, 10)} == {"truncated"}
    stream = _idat_stream(damaged["png/rgb"])
    assert reasons["png/rgb-filter-7-row-0"] == "corrupt"
    assert reasons[f"png/rgb-deflate-cut-{len(stream) // 2}"] == "truncated"
    assert reasons["png/rgb-short-rows"] == "valid"  # PIL fills missing rows when the stream ends properly


def test_the_bad_record_partition_gets_the_same_verdicts_and_its_known_reasons(tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=12)
    expected = parts.add_defects(raw)
    files = {str(p.relative_to(raw)): p.read_bytes() for p in sorted((raw / "images").iterdir())}
    assert len(files) == 12 + 10  # with the defects that are files, including those with label problems
    assert differences(files) == {}
    image_reasons = {rel: reason for rel, reason in expected.items() if reason in IMAGE_REASONS}
    assert set(image_reasons.values()) == IMAGE_REASONS
    assert {rel: verdict(image_check.check_image, files[rel])[0] for rel in image_reasons} == image_reasons


def test_valid_images_are_decoded_once_at_reduced_cost(damaged, monkeypatch):
    """The speed: a valid JPEG or plain PNG never falls back to the full decode; a damaged one always does."""
    full = []
    real = image_check._full_decode
    monkeypatch.setattr(image_check, "_full_decode", lambda data, fmt: (full.append(fmt), real(data, fmt)))
    for name in ("jpeg/baseline-420", "jpeg/baseline-444-odd", "jpeg/progressive", "jpeg/grey", "jpeg/restarts",
                 "png/rgb", "png/rgba", "png/grey", "png/palette", "png/grey-alpha", "png/rgb-split-idat"):
        assert verdict(image_check.check_image, damaged[name])[0] == "valid"
    assert full == []
    for name in ("jpeg/baseline-420-cut-" + str(len(damaged["jpeg/baseline-420"]) - 1), "png/rgb-filter-7-row-0"):
        assert verdict(image_check.check_image, damaged[name])[0] != "valid"
    assert len(full) == 2


@pytest.mark.parametrize("broken, caught", [
    ("jpeg-header-only", "-cut-"),  # trust the headers, decode nothing
    ("png-no-inflate", "-deflate-flip-"),  # verify() alone: the chunk checksums
    ("png-no-filter-check", "-filter-7-"),  # inflate, but not look at the rows
    ("png-unfinished-stream-ok", "-deflate-cut-"),  # deflate data that stops mid-stream taken as complete
])
def test_the_comparison_catches_a_broken_fast_check(damaged, monkeypatch, broken, caught):
    """Each is a plausible shortcut; the damaged images show that it changes verdicts."""
    if broken == "jpeg-header-only":
        monkeypatch.setattr(image_check, "_jpeg_decodes_at_reduced_scale", lambda im: True)
    else:
        shortcut = {"png-no-inflate": lambda data: True, "png-no-filter-check": _without_filter_check,
                    "png-unfinished-stream-ok": _unfinished_is_complete}[broken]
        monkeypatch.setattr(image_check, "_png_pixels_complete", shortcut)
    found = differences(damaged)
    assert any(caught in name for name in found), sorted(found)
    for fast, full in found.values():
        assert fast[0] == "valid" and full[0] in ("truncated", "corrupt")


def _inflates(data: bytes) -> bytes | None:
    try:
        return zlib.decompress(_idat_stream(data))
    except zlib.error:
        return None


def _without_filter_check(data: bytes) -> bool:
    return _inflates(data) is not None


def _unfinished_is_complete(data: bytes) -> bool:
    try:
        zlib.decompressobj().decompress(_idat_stream(data))  # no error for a stream that stops early: it waits for more
    except zlib.error:
        return False
    return True


def test_the_shard_task_quarantines_damaged_jpegs_with_the_reference_reasons(tmp_path):
    """The damaged JPEGs as a raw partition through the shard task prep runs (no Spark needed to call it): every
    file is written or quarantined as the full decode says."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    files = damaged_jpegs()
    (raw / "images").mkdir(parents=True)
    (out / "q").mkdir(parents=True)
    planned = []
    for i, (name, data) in enumerate(sorted(files.items())):
        rel = f"images/{i:04d}-{name}.jpg"
        (raw / rel).write_bytes(data)
        planned.append(prep_tasks.Planned(id=rel, label="x", label_id=0, source=rel, size=len(data)))
    task = prep_tasks.ShardTask(0, "train", "train-00000-of-00001.tfrecord", tuple(planned))
    ctx = prep_tasks.Context(raw=f"file://{raw}", staging=f"file://{out}", quarantine_staging=f"file://{out}/q",
                             bounds=BOUNDS, webhdfs={})
    result = prep_tasks.write_files_shard(task, ctx)
    got = {b[0]: (b[2], b[3]) for b in result["bad"]}
    want = {}
    for r in planned:
        v = verdict(image_check.check_image_full, (raw / r.source).read_bytes())
        if v[0] != "valid":
            want[r.id] = v
    assert got == want and len(want) > 40
    assert result["records"] == len(files) - len(want)
    assert Path(out / task.name).stat().st_size > 0


def _with_segment(jpeg: bytes, marker: int, body: bytes) -> bytes:
    """``jpeg`` with a segment inserted right after its start-of-image marker."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[:sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]


def _header_variants() -> dict[str, tuple[bytes, bool]]:
    """JPEGs whose headers PIL treats differently from libjpeg, or parses itself: ``{name: (data, plain)}``, where
    ``plain`` says whether the check may skip PIL's parse of the headers."""
    picture = _picture((96, 72), 9)
    base = _encoded(picture, "JPEG", quality=85)
    exif = Image.Exif()
    exif[0x010F] = "maker"
    short_dqt = base.replace(b"\xff\xdb\x00\x43", b"\xff\xdb\x00\x33", 1)  # the table runs past its segment
    return {
        "jfif": (base, True),
        "comment": (_with_segment(base, 0xFE, b"a comment"), True),
        "xmp": (_with_segment(base, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>"), True),
        "exif": (_encoded(picture, "JPEG", quality=85, exif=exif), False),  # PIL reads it when opening
        "exif-broken": (_with_segment(base, 0xE1, b"Exif\x00\x00MM\x00\x2a\x00\x00\xff\xff"), False),
        "icc": (_encoded(picture, "JPEG", quality=85, icc_profile=b"\x00" * 200), False),
        "mpf": (_with_segment(base, 0xE2, b"MPF\x00" + b"\x00" * 16), False),  # PIL may open it as MPO
        "adobe-cmyk": (_encoded(picture.convert("CMYK"), "JPEG", quality=85), False),
        "jfif-short": (_with_segment(base[:2] + base[20:], 0xE0, b"JFIF\x00\x01"), False),  # PIL: struct.error
        "dqt-short": (short_dqt, False),
        "huge-frame": (_with_frame_size(base, 20000, 20000), False),  # out of bounds; a bomb for PIL
        "tiny-frame": (_with_frame_size(base, 4, 4), False),
    }


def test_plain_jpegs_skip_pils_header_parse_and_the_others_keep_it(monkeypatch):
    """Only the JPEGs whose headers PIL opens without parsing anything that could fail are checked without it;
    every variant gets the reference's verdict either way."""
    variants = _header_variants()
    assert differences({name: data for name, (data, _) in variants.items()}) == {}
    opened = []
    real = image_check._opened
    monkeypatch.setattr(image_check, "_opened", lambda data: (opened.append(data), real(data))[1])
    for name, (data, plain) in variants.items():
        opened.clear()
        verdict(image_check.check_image, data)
        assert (opened == []) == plain, name
    reasons = {name: verdict(image_check.check_image_full, data)[0] for name, (data, _) in variants.items()}
    assert reasons["jfif"] == reasons["exif"] == reasons["icc"] == "valid"
    assert {reasons["huge-frame"], reasons["tiny-frame"]} <= {"too_large", "too_small", "corrupt", "truncated"}
