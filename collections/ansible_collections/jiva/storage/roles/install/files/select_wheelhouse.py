# Run by the install role on the control node: python select_wheelhouse.py DIR TARGET...
# Prints JSON {TARGET: {"target", "tar", "sha256"} or null}: for each wanted target
# (cpXY-manylinux_2_N_ARCH) the archive DIR/T.tar with the same Python and CPU and the highest
# glibc floor not above N (a wheelhouse built for glibc 2.17 serves a glibc 2.36 host).
import hashlib
import json
import re
import sys
from pathlib import Path

TARGET = re.compile(r"^cp(\d+)-manylinux_2_(\d+)_([a-z0-9_]+)$")


def sha256(path):
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(folder, wanted):
    have = []
    if folder.is_dir():
        for tar in sorted(folder.glob("*.tar")):
            m = TARGET.match(tar.name[: -len(".tar")])
            if m:
                have.append((m.group(1), int(m.group(2)), m.group(3), tar))
    out = {}
    for w in wanted:
        m = TARGET.match(w)
        fits = [
            h
            for h in have
            if m and (h[0], h[2]) == (m.group(1), m.group(3)) and h[1] <= int(m.group(2))
        ]
        if fits:
            tar = max(fits, key=lambda h: h[1])[3]
            out[w] = {"target": tar.name[: -len(".tar")], "tar": str(tar), "sha256": sha256(tar)}
        else:
            out[w] = None
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2:])))
