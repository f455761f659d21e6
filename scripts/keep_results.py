"""Keep a GPU check's results in the repository: results/DATE-CARD/.

    python scripts/keep_results.py OUT results/2026-12-04-h200

OUT is what a check returned (scripts/gpu_check.sh's $OUT: summary.txt and logs.tgz; or the
same files unpacked). Each record of ours goes to DEST/LABEL/record.json (a sweep's to
sweep-LABEL/, a search's to tune-LABEL/), the layout of the runs folder, so that
`hlb runs --dir DEST`, `hlb board DEST`, `hlb verify DEST/LABEL/record.json` and `hlb compare`
read them; summary.txt (and a README.md) go to DEST/, and the other small logs (stage times,
matmul rate, clock samples, the references' logs, profiles) to DEST/logs/. Never kept: the
compile cache, data, anything over 256 KiB or of another kind. DEST must be new or empty.
"""

import json
import sys
import tarfile
from pathlib import Path

MAX_LOG = 256 * 1024
LOG_SUFFIXES = (".log", ".txt", ".csv", ".csv.gz", ".md")
RECORD_PREFIXES = ("ours-", "sweep-", "tune-")


def members(out):
    """{file name: bytes} of the check's files: logs.tgz's regular files (read, never
    extracted) and the loose files in OUT and OUT/logs/."""
    files = {}
    packed = out / "logs.tgz"
    if packed.is_file():
        with tarfile.open(packed) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.size <= 64 * 2**20:
                    files[Path(member.name).name] = tar.extractfile(member).read()
    for folder in (out, out / "logs"):
        for path in sorted(folder.glob("*")) if folder.is_dir() else ():
            if path.is_file() and not path.is_symlink() and path.name != "logs.tgz":
                files.setdefault(path.name, path.read_bytes())
    return files


def record_folder(name, data):
    """The folder a record of ours goes to, or None when `name` holds no such record."""
    stem = name[:-len(".json")]
    if not (name.endswith(".json") and stem.startswith(RECORD_PREFIXES)):
        return None
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not (isinstance(record, dict) and str(record.get("format", "")).startswith("hlb-cifar10")):
        return None
    return stem[len("ours-"):] if stem.startswith("ours-") else stem


def keep(out, dest):
    """Copy the check in `out` into `dest`; the lines saying what was kept and left out."""
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty: give a new folder")
    files = members(out)
    if not any(record_folder(n, d) for n, d in files.items()):
        raise ValueError(f"{out} holds no record of ours (ours-LABEL.json, or logs.tgz with one)")
    lines, left = [], []
    for name, data in sorted(files.items()):
        folder = record_folder(name, data)
        if folder:
            target = dest / folder / "record.json"
        elif name in ("summary.txt", "README.md"):
            target = dest / name
        elif name.endswith(LOG_SUFFIXES) and len(data) <= MAX_LOG:
            target = dest / "logs" / name
        else:
            left.append(name)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        lines.append(f"kept {target}")
    if left:
        lines.append("left out (not a record or small log): " + ", ".join(left))
    return lines


def main(argv):
    if len(argv) != 2:
        print("usage: python scripts/keep_results.py OUT results/DATE-CARD", file=sys.stderr)
        return 2
    out, dest = Path(argv[0]), Path(argv[1])
    if not out.is_dir():
        print(f"error: {out} is not a folder", file=sys.stderr)
        return 2
    try:
        print("\n".join(keep(out, dest)))
    except (ValueError, OSError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
