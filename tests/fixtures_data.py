"""Tiny, format-true dataset archives and a loopback HTTP server for the data tests.

Import from test modules (``from fixtures_data import ...``); the pytest fixtures defined here
(``server``, ``coco_files``, ``flickr_files``, ``precomp_files``) are picked up when imported.
Nothing here contacts anything but 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# --------------------------------------------------------------------------- archive builders


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jpeg_bytes(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=70)
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None, dirs: bool = True) -> bytes:
    """A deflated zip of ``entries`` (name -> bytes), plus unix ``symlinks`` (name -> target)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if dirs:
            folders = sorted({n.rsplit("/", 1)[0] + "/" for n in entries
                              if "/" in n and not n.startswith("/") and ".." not in n})
            for folder in folders:
                zf.writestr(zipfile.ZipInfo(folder), b"")
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target.encode())
    return buf.getvalue()


def tar_bytes(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None,
              hardlinks: dict[str, str] | None = None, gz: bool = True) -> bytes:
    """A tar(.gz) of ``entries`` plus ``symlinks`` and ``hardlinks`` (name -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        folders = sorted({n.rsplit("/", 1)[0] for n in entries if "/" in n and not n.startswith("/") and ".." not in n})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
        for kind, links in ((tarfile.SYMTYPE, symlinks or {}), (tarfile.LNKTYPE, hardlinks or {})):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                tf.addfile(info)
    return buf.getvalue()


def karpathy_entry(imgid: int, filename: str, split: str, captions: list[str], *,
                   filepath: str | None = None, cocoid: int | None = None) -> dict[str, Any]:
    sentences = [{"tokens": c.lower().rstrip(".").split(), "raw": c, "imgid": imgid, "sentid": imgid * 10 + k}
                 for k, c in enumerate(captions)]
    entry: dict[str, Any] = {"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                             "split": split, "filename": filename}
    if filepath is not None:
        entry["filepath"] = filepath
    if cocoid is not None:
        entry["cocoid"] = cocoid
    return entry


def captions(tag: str, n: int = 5) -> list[str]:
    return [f"A {tag} photo, caption number {k}." for k in range(n)]


# (folder, coco id, Karpathy split, width, height, number of captions)
COCO_IMAGES = [
    ("train2014", 9, "train", 40, 30, 5),
    ("train2014", 25, "train", 32, 48, 7),   # COCO has a few images with 6-7 captions
    ("train2014", 30, "train", 24, 24, 5),
    ("val2014", 42, "restval", 36, 20, 5),
    ("val2014", 73, "val", 28, 36, 6),
    ("val2014", 74, "test", 44, 32, 5),
]
COCO_EXTRA_IMAGE = 999  # in instances_val2014.json but not in the Karpathy split
COCO_CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
]


def coco_file_name(folder: str, coco_id: int) -> str:
    return f"COCO_{folder}_{coco_id:012d}.jpg"


@dataclass
class FixtureSet:
    """Archives by manifest key (``files[key] = (filename, bytes)``) and facts the tests check."""

    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def build_karpathy_zip() -> bytes:
    coco = {"dataset": "coco", "images": [
        karpathy_entry(i, coco_file_name(folder, cid), split, captions(f"coco{cid}", n), filepath=folder, cocoid=cid)
        for i, (folder, cid, split, _, _, n) in enumerate(COCO_IMAGES)]}
    f30k = {"dataset": "flickr30k", "images": [
        karpathy_entry(i, f"{fid}.jpg", split, captions(f"flickr{fid}", n))
        for i, (fid, split, _, _, n) in enumerate(FLICKR_IMAGES)]}
    f8k = {"dataset": "flickr8k", "images": [karpathy_entry(0, "667626_18933d713e.jpg", "train", captions("f8k"))]}
    return zip_bytes({
        "dataset_coco.json": json.dumps(coco).encode(),
        "dataset_flickr30k.json": json.dumps(f30k).encode(),
        "dataset_flickr8k.json": json.dumps(f8k).encode(),
    }, dirs=False)


def build_coco() -> FixtureSet:
    fs = FixtureSet()
    fs.files["karpathy_captions"] = ("caption_datasets.zip", build_karpathy_zip())
    instances = {folder: {"info": {"description": "COCO 2014 Dataset (fixture)", "year": 2014},
                          "licenses": [{"id": 1, "name": "CC BY", "url": "http://example.invalid"}],
                          "images": [], "annotations": [], "categories": COCO_CATEGORIES}
                 for folder in ("train2014", "val2014")}
    images: dict[str, dict[str, bytes]] = {"train2014": {}, "val2014": {}}
    ann_id = 100
    rows = [(f, c, w, h) for f, c, _, w, h, _ in COCO_IMAGES] + [("val2014", COCO_EXTRA_IMAGE, 20, 20)]
    for folder, cid, w, h in rows:
        name = coco_file_name(folder, cid)
        images[folder][f"{folder}/{name}"] = jpeg_bytes(w, h, seed=cid)
        instances[folder]["images"].append({"license": 1, "file_name": name, "coco_url": "", "height": h, "width": w,
                                            "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": cid})
        for k in range(2 if cid != 30 else 0):  # image 30 has no objects
            ann_id += 1
            x, y, bw, bh = 2.0 + k, 3.0, w / 3, h / 4
            instances[folder]["annotations"].append({
                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], "area": bw * bh, "iscrowd": 0,
                "image_id": cid, "bbox": [x, y, bw, bh], "category_id": COCO_CATEGORIES[k]["id"], "id": ann_id})
    fs.files["coco_train2014"] = ("train2014.zip", zip_bytes(images["train2014"]))
    fs.files["coco_val2014"] = ("val2014.zip", zip_bytes(images["val2014"]))
    fs.files["coco_annotations_trainval2014"] = ("annotations_trainval2014.zip", zip_bytes({
        "annotations/instances_train2014.json": json.dumps(instances["train2014"]).encode(),
        "annotations/instances_val2014.json": json.dumps(instances["val2014"]).encode(),
        "annotations/captions_train2014.json": b'{"annotations": []}',
    }))
    fs.facts = {"instances": instances, "images": images}
    return fs


# (flickr photo id, Karpathy split, width, height, number of captions)
FLICKR_IMAGES = [
    (1000092795, "train", 50, 40, 5),
    (10002456, "train", 30, 45, 5),
    (1000268201, "train", 40, 40, 6),
    (1000344755, "train", 36, 28, 5),
    (1000366164, "val", 42, 30, 5),
    (1000523639, "test", 26, 34, 5),
]


def entities_xml(fid: int, width: int, height: int, boxes: list[tuple[str, tuple[int, int, int, int]]],
                 scene_ids: list[str] = ()) -> bytes:
    objects = "".join(
        f"<object><name>{pid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>" for pid, (x0, y0, x1, y1) in boxes)
    objects += "".join(f"<object><name>{pid}</name><nobndbox>0</nobndbox><scene>1</scene></object>" for pid in scene_ids)
    return (f"<annotation><filename>{fid}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objects}</annotation>").encode()


def build_flickr() -> FixtureSet:
    fs = FixtureSet()
    fs.files["karpathy_captions"] = ("caption_datasets.zip", build_karpathy_zip())
    images = {f"flickr30k-images/{fid}.jpg": jpeg_bytes(w, h, seed=fid % 1000) for fid, _, w, h, _ in FLICKR_IMAGES}
    images["flickr30k-images/readme.txt"] = b"Flickr30K images (fixture)\n"
    fs.files["flickr30k_images"] = ("flickr30k-images.tar.gz", tar_bytes(images))
    first, second = FLICKR_IMAGES[0], FLICKR_IMAGES[4]
    entities = {
        f"Annotations/{first[0]}.xml": entities_xml(first[0], first[2], first[3],
                                                    [("101", (1, 1, 20, 30)), ("102", (10, 5, 50, 40))], ["103"]),
        f"Sentences/{first[0]}.txt": (f"[/EN#101/people A man] in [/EN#102/clothing a red shirt] stands in "
                                      f"[/EN#103/scene a park] .\n").encode(),
        f"Annotations/{second[0]}.xml": entities_xml(second[0], second[2], second[3], [("201", (5, 5, 15, 25))]),
        f"Sentences/{second[0]}.txt": b"[/EN#201/animals A dog] runs .\n",
    }
    fs.files["flickr30k_entities"] = ("annotations.zip", zip_bytes(entities))
    fs.facts = {"images": images}
    return fs


PRECOMP_SPLITS = {"coco_precomp": {"train": 3, "dev": 2, "testall": 2}, "f30k_precomp": {"train": 2, "dev": 1, "test": 2}}


def build_precomp() -> FixtureSet:
    fs = FixtureSet()
    entries: dict[str, bytes] = {}
    for name, splits in PRECOMP_SPLITS.items():
        for offset, (split, n) in enumerate(splits.items()):
            buf = io.BytesIO()
            ims = np.zeros((n, 36, 2048), dtype=np.float32)
            ims[:, :, 0] = np.arange(n, dtype=np.float32)[:, None]
            np.save(buf, ims)
            entries[f"data/{name}/{split}_ims.npy"] = buf.getvalue()
            entries[f"data/{name}/{split}_caps.txt"] = "".join(f"caption {i} {k}\n" for i in range(n) for k in range(5)).encode()
            entries[f"data/{name}/{split}_ids.txt"] = "".join(f"{1000 * (offset + 1) + i}\n" for i in range(n)).encode()  # unique across splits, as in SCAN's data
    entries["data/vocab/README"] = b"vocab lives elsewhere\n"
    fs.files["scan_precomp"] = ("data.zip", zip_bytes(entries))
    fs.facts = {"entries": entries}
    return fs


# --------------------------------------------------------------------------- loopback server


@dataclass
class Behavior:
    """How the server answers one path: the tests' failure modes."""

    fail_503: int = 0            # answer 503 to the first N requests
    cut_at: int | None = None    # send Content-Length in full but only this many bytes, then drop
    cut_times: int = 1           # ... for this many requests
    ignore_range: bool = False   # answer 200 with the whole body even when a Range is asked for
    corrupt: bool = False        # serve the right length but wrong bytes
    status: int | None = None    # always answer with this status (e.g. 404)
    stall_at: int | None = None  # on the first request, send this many bytes then go silent ...
    stall_s: float = 0.0         # ... for this long, then drop the connection
    seen: int = 0
    cuts: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # connection drops are expected here
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass

    def _plain(self, status: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def do_GET(self):
        owner: LoopbackServer = self.server.owner  # type: ignore[attr-defined]
        name = self.path.split("?", 1)[0].lstrip("/")
        asked = self.headers.get("Range")
        with owner.lock:
            data = owner.files.get(name)
            beh = owner.behaviors.setdefault(name, Behavior())
            beh.seen += 1
            record = {"path": name, "range": asked, "status": None}
            owner.requests.append(record)
        if data is None or beh.status:
            record["status"] = beh.status or 404
            return self._plain(record["status"])
        if beh.seen <= beh.fail_503:
            record["status"] = 503
            return self._plain(503)
        body = data
        if beh.corrupt:
            body = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start, status = 0, 200
        if asked and not beh.ignore_range:
            try:
                start = int(asked.split("=", 1)[1].split("-", 1)[0])
            except (IndexError, ValueError):
                start = 0
            if start >= len(body):
                record["status"] = 416
                return self._plain(416, {"Content-Range": f"bytes */{len(body)}"})
            status = 206
        payload = body[start:]
        record["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        if not beh.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        with owner.lock:
            cut = beh.cut_at is not None and beh.cuts < beh.cut_times and start < beh.cut_at
            if cut:
                beh.cuts += 1
        if beh.stall_at is not None and beh.seen == 1:
            self.wfile.write(payload[: beh.stall_at])
            self.wfile.flush()
            time.sleep(beh.stall_s)
            self.close_connection = True
            return
        if cut:
            self.wfile.write(payload[: beh.cut_at - start])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(payload)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (random port) serving in-memory files."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviors: dict[str, Behavior] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def serve(self, name: str, data: bytes, **behavior: Any) -> str:
        with self.lock:
            self.files[name] = data
            self.behaviors[name] = Behavior(**behavior)
        return self.url(name)

    def count(self, name: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if name is None or r["path"] == name)

    def log(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self.requests if r["path"] == name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_set(server: LoopbackServer, fs: FixtureSet, *, prefix: str = "", pin: bool = True,
              skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Serve every archive of ``fs``; return config overrides pointing the manifest at them.

    With ``pin`` the fixture's sizes and sha256 replace the manifest's (which belong to the real
    files); without it they are unknown and get recorded in the lock file on first download.
    """
    urls, checksums = {}, {}
    for key, (filename, data) in fs.files.items():
        if key in skip:
            continue
        urls[key] = server.serve(f"{prefix}{filename}", data)
        checksums[key] = {"sha256": sha256(data), "size": len(data)} if pin else {"sha256": None, "size": None}
    return {"urls": urls, "checksums": checksums}


def base_cfg(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A dataset params section for tests: fast retries, no progress bars, cache under tmp."""
    cfg: dict[str, Any] = {"root": None, "cache_dir": str(tmp_path / "downloads"), "retries": 3, "backoff": 0.0,
                           "timeout": 5.0}
    cfg.update(extra)
    return cfg


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = LoopbackServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="session")
def coco_files() -> FixtureSet:
    return build_coco()


@pytest.fixture(scope="session")
def flickr_files() -> FixtureSet:
    return build_flickr()


@pytest.fixture(scope="session")
def precomp_files() -> FixtureSet:
    return build_precomp()
