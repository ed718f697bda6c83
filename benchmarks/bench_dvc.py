"""DVC cache link types for a workspace that Snakemake runs and DVC records (`dvc commit -f` after the run).

A generated tree (many small "image" files + one large "HDF5-like" binary + a small summary of both) is made
once by a 3-rule Snakefile (with `benchmark:` files, as the project's rules) whose dvc.yaml declares the same
stages. A copy of it (mtimes and Snakemake's metadata kept) is recorded with each cache link type and timed:
the first `dvc commit -f` (cache empty), `dvc status`, a no-op `dvc repro`, Snakemake's no-op dry run, the disk
used (workspace + cache, a hardlinked file counted once), and a `dvc checkout` of the whole tree. Correctness:

  dvc clean / repro no-op   `dvc status` is clean and `dvc repro` runs nothing after the record
  sm_noop   after the record, `snakemake -n` finds nothing to do (the record kept the outputs' mtimes;
            a symlink's own mtime is the record's, newer than the job's benchmark file Snakemake compares)
  writable  the outputs stay writable: DVC makes hardlinked outputs read-only, and Snakemake refuses to
            rerun a job whose output a non-root user cannot write (ProtectedOutputException, even under -n)
  rerun_ok  after a rerun whose upstream output changed but whose downstream output came out byte-identical
            (a table that rounds the same), followed by a record, `snakemake -n` still finds nothing to do
            (a relinking record points the identical file at the old cache object, i.e. its old mtime)
  pulled writable   the same after `dvc checkout` (a colleague's `dvc pull`)

    python benchmarks/bench_dvc.py                          # ~2 min (2 cores): 1,000 files of 4 KiB + 32 MiB
    python benchmarks/bench_dvc.py --coco-scale             # 123,287 files (COCO's images) + a 4 GiB file
    python benchmarks/bench_dvc.py --files 500 --big-mb 16 --types copy hardlink --record no-relink --workdir /x

Each cache.type is measured with both records: `dvc commit -f` as is (it relinks outputs to the cache) and with
--no-relink (what `fga dvc-record` runs). Timings are wall seconds of one try each.

--workdir picks the filesystem (reflink needs XFS, btrfs or APFS; it is skipped where `cp --reflink` fails).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MLFLOW_DISABLE_TELEMETRY": "true"}
LINK_TYPES = ("copy", "reflink,copy", "reflink", "hardlink", "symlink")

GENERATOR = '''\
"""Deterministic tree: `images N KB` -> tree/images/, `big MB SEED` -> tree/big.h5, `summary` -> tree/summary.json."""
import json, random, sys
from pathlib import Path

what = sys.argv[1]
if what == "images":
    out = Path("tree/images"); out.mkdir(parents=True, exist_ok=True)
    n, size = int(sys.argv[2]), int(sys.argv[3]) * 1024
    for i in range(n):
        sub = out / f"{i // 1000:03d}"; sub.mkdir(exist_ok=True)
        (sub / f"{i:012d}.jpg").write_bytes(random.Random(i).randbytes(size))
elif what == "big":
    mb, seed = int(sys.argv[2]), int(sys.argv[3])
    with open("tree/big.h5", "wb") as fh:
        for chunk in range(mb):
            fh.write(random.Random(seed * 1_000_003 + chunk).randbytes(1 << 20))
else:  # what the report would keep: counts and sizes, the same when big.h5 changes content but not size
    images = sorted(Path("tree/images").rglob("*.jpg"))
    Path("tree/summary.json").write_text(json.dumps(
        {"images": len(images), "image_bytes": sum(p.stat().st_size for p in images),
         "big_bytes": Path("tree/big.h5").stat().st_size}, sort_keys=True) + "\\n")
'''

SNAKEFILE = '''\
rule all:
    input: "tree/summary.json"
rule images:
    output: directory("tree/images")
    benchmark: "logs/images.tsv"
    shell: "python gen.py images {n} {kb}"
rule big:
    output: "tree/big.h5"
    params: seed=config.get("seed", 0)
    benchmark: "logs/big.tsv"
    shell: "python gen.py big {mb} {{params.seed}}"
rule summary:
    input: "tree/images", "tree/big.h5"
    output: "tree/summary.json"
    benchmark: "logs/summary.tsv"
    shell: "python gen.py summary"
'''

DVC_YAML = '''\
stages:
  images: {{cmd: python gen.py images {n} {kb}, outs: [tree/images]}}
  big: {{cmd: python gen.py big {mb} 0, outs: [tree/big.h5]}}
  summary: {{cmd: python gen.py summary, deps: [tree/images, tree/big.h5], outs: [tree/summary.json]}}
'''


def sh(args: list[str], cwd: Path, timeout: float = 3600) -> tuple[float, str]:
    """Run a command of the venv (dvc, snakemake, git); (wall seconds, stdout + stderr); exit on failure."""
    exe = shutil.which(args[0], path=str(BIN)) or args[0]
    t0 = time.perf_counter()
    out = subprocess.run([exe, *args[1:]], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{(out.stdout + out.stderr)[-3000:]}")
    return elapsed, out.stdout + out.stderr


def make_template(work: Path, files: int, kb: int, mb: int) -> tuple[Path, float]:
    """The tree as Snakemake makes it (with its metadata) in a git + DVC repository; (dir, seconds)."""
    tpl = work / "template"
    tpl.mkdir(parents=True)
    (tpl / "gen.py").write_text(GENERATOR)
    (tpl / "Snakefile").write_text(SNAKEFILE.format(n=files, kb=kb, mb=mb))
    (tpl / "dvc.yaml").write_text(DVC_YAML.format(n=files, kb=kb, mb=mb))
    (tpl / ".dvcignore").write_text(".snakemake_timestamp\n")
    (tpl / ".gitignore").write_text("/tree/\n/logs/\n/.snakemake/\n")
    sh(["git", "init", "-q"], tpl)
    sh(["dvc", "init", "-q"], tpl)
    seconds, _ = sh(["snakemake", "--cores", "1", "--quiet", "all"], tpl)
    return tpl, seconds


def reflink_supported(work: Path) -> bool:
    probe = work / ".reflink-probe"
    probe.write_bytes(b"x")
    ok = subprocess.run(["cp", "--reflink=always", str(probe), str(probe) + ".2"], capture_output=True).returncode == 0
    for p in (probe, Path(str(probe) + ".2")):
        p.unlink(missing_ok=True)
    return ok


def disk_mb(path: Path) -> float:
    """Blocks used under `path`, a file with several links counted once (du's rule)."""
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def sm_nothing_to_do(project: Path, *args: str) -> tuple[float, bool]:
    seconds, text = sh(["snakemake", "-n", "--cores", "1", *args], project)
    return seconds, "Nothing to be done" in text


def measure(tpl: Path, work: Path, link: str, relink: bool) -> dict[str, object]:
    """One link type on a fresh copy of the template: the timings and correctness columns of the table."""
    project = work / f"{link}-{relink}"
    subprocess.run(["cp", "-a", str(tpl), str(project)], check=True)  # -a: mtimes and .snakemake kept
    sh(["dvc", "config", "cache.type", link], project)
    record = ["dvc", "commit", "-f", "-q"] + ([] if relink else ["--no-relink"])
    row: dict[str, object] = {"type": link, "record": " ".join(record[1:])}
    row["commit_s"], _ = sh(record, project)
    row["status_s"], text = sh(["dvc", "status"], project)
    row["dvc_clean"] = "up to date" in text
    row["repro_s"], text = sh(["dvc", "repro"], project)
    row["repro_noop"] = "Running stage" not in text
    row["sm_dry_s"], row["sm_noop"] = sm_nothing_to_do(project)
    row["disk_mb"] = disk_mb(project)
    row["writable"] = writable(project / "tree" / "big.h5")
    # upstream changes, downstream comes out identical: Snakemake reruns both, the record relinks
    sh(["snakemake", "--cores", "1", "--quiet", "all", "--config", "seed=1"], project)
    sh(record, project)
    row["rerun_ok"] = sm_nothing_to_do(project, "--config", "seed=1")[1] if row["sm_noop"] else False
    # a colleague's side: the outputs come back from the cache (`dvc pull` = fetch + this checkout)
    shutil.rmtree(project / "tree")
    row["checkout_s"], _ = sh(["dvc", "checkout", "-q"], project)
    row["pulled_writable"] = writable(project / "tree" / "big.h5")
    shutil.rmtree(project)
    return row


def writable(path: Path) -> bool:
    """Whether Snakemake may rerun the job of `path` as a non-root user (it never counts a symlink protected)."""
    return path.is_symlink() or bool(path.stat().st_mode & 0o200)


COLUMNS = [("type", "cache.type", "{}"), ("record", "record", "{}"), ("commit_s", "commit s", "{:.1f}"), ("status_s", "status s", "{:.1f}"),
           ("repro_s", "no-op repro s", "{:.1f}"), ("sm_dry_s", "snakemake -n s", "{:.1f}"),
           ("disk_mb", "disk MiB", "{:.0f}"), ("dvc_clean", "dvc clean", "{}"), ("repro_noop", "repro no-op", "{}"),
           ("sm_noop", "sm_noop", "{}"), ("writable", "writable", "{}"), ("rerun_ok", "rerun_ok", "{}"),
           ("checkout_s", "checkout s", "{:.1f}"), ("pulled_writable", "pulled writable", "{}")]


def print_table(rows: list[dict[str, object]]) -> None:
    print("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        if "skipped" in row:
            print(f"| {row['type']} | {row['skipped']} |" + " |" * (len(COLUMNS) - 2))
            continue
        print("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "CPU unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU unknown")


def dvc_version() -> str:
    return sh(["dvc", "--version"], Path.cwd())[1].strip()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000, help="small files (default 1000)")
    ap.add_argument("--file-kb", type=int, default=4, help="size of each small file in KiB (default 4)")
    ap.add_argument("--big-mb", type=int, default=32, help="size of the large file in MiB (default 32)")
    ap.add_argument("--coco-scale", action="store_true", help="123,287 files (COCO 2014 train+val) + a 4 GiB file")
    ap.add_argument("--types", nargs="+", default=list(LINK_TYPES), help="cache.type values to measure")
    ap.add_argument("--record", nargs="+", choices=["relink", "no-relink"], default=["relink", "no-relink"],
                    help="`dvc commit -f` as is (relinks outputs to the cache) and/or with --no-relink (fga's)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build the trees (its filesystem counts)")
    a = ap.parse_args(argv)
    if a.coco_scale:
        a.files, a.big_mb = 123_287, 4096
    if a.workdir:
        a.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_model()}, {os.cpu_count()} threads; dvc {dvc_version()}")
    with tempfile.TemporaryDirectory(prefix="fga-bench-dvc-", dir=a.workdir) as tmp:
        work = Path(tmp)
        fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
        print(f"tree: {a.files} files x {a.file_kb} KiB + {a.big_mb} MiB, on {fs} ({work})")
        tpl, seconds = make_template(work, a.files, a.file_kb, a.big_mb)
        print(f"generated by snakemake in {seconds:.1f} s; workspace {disk_mb(tpl / 'tree'):.0f} MiB")
        rows = []
        for link in a.types:
            if link == "reflink" and not reflink_supported(work):
                rows.append({"type": link, "skipped": f"unsupported on {fs}"})
                continue
            for record in a.record:
                rows.append(measure(tpl, work, link, relink=record == "relink"))
                print(f"  {link} ({record}): done", file=sys.stderr)
    print_table(rows)


if __name__ == "__main__":
    main()
