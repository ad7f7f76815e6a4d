"""`fastnorm data`: fetch CIFAR-10 and show where the datasets are.

    fastnorm data download [--dest DIR] [--retries N] [--force] [--quiet]
    fastnorm data info [--dest DIR]

--data-dir is another name for --dest, the one `fastnorm experiment` uses.
"""

from __future__ import annotations

import os
import sys

from . import cifar10, download


def add_parser(subparsers):
    parser = subparsers.add_parser("data", help="download CIFAR-10, show dataset locations",
                                   description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    dl = actions.add_parser("download", help="download, verify (MD5) and extract CIFAR-10")
    # --data-dir: the name `fastnorm experiment` gives the same folder
    dl.add_argument("--dest", "--data-dir", dest="dest", default=None,
                    help="folder for the archive and cifar-10-batches-py "
                         "(default: $FASTNORM_DATA_DIR, else ~/.cache/fastnorm)")
    dl.add_argument("--url", default=download.CIFAR10_URL, help="archive URL (default: the official one)")
    dl.add_argument("--md5", default=download.CIFAR10_MD5, help="expected MD5 of the archive")
    dl.add_argument("--retries", type=int, default=3, help="further attempts after a failure (default: 3)")
    dl.add_argument("--timeout", type=float, default=60.0, help="seconds per network read (default: 60)")
    dl.add_argument("--force", action="store_true", help="download and extract even if present")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(func=run)

    info = actions.add_parser("info", help="where the datasets are and whether CIFAR-10 is there")
    info.add_argument("--dest", "--data-dir", dest="dest", default=None,
                      help="data folder (default: the cache folder)")
    info.set_defaults(func=run)
    return parser


def run(args) -> int:
    if args.data_command == "download":
        return _download(args)
    return _info(args)


def _download(args) -> int:
    if args.retries < 0:
        print("fastnorm data download: --retries must be >= 0", file=sys.stderr)
        return 2
    try:
        folder = download.download_cifar10(dest=args.dest, url=args.url, md5=args.md5 or None,
                                           retries=args.retries, timeout=args.timeout,
                                           progress=not args.quiet, force=args.force)
    except ValueError as exc:  # a bad --timeout, --md5 or --url
        print(f"fastnorm data download: {exc}", file=sys.stderr)
        return 2
    except download.DownloadError as exc:
        print(f"fastnorm data download: {exc}", file=sys.stderr)
        return 1
    print(f"CIFAR-10 is in {folder}")
    return 0


def _info(args) -> int:
    dest = args.dest or cifar10.default_data_dir()
    folder = os.path.join(dest, cifar10.FOLDER)
    present = download._complete(folder)
    print(f"data folder: {dest}")
    print(f"CIFAR-10:    {folder} ({'present' if present else 'missing: run `fastnorm data download`'})")
    print("digits:      bundled with scikit-learn (fastnorm.data.get_digits_data), no download needed")
    return 0
