"""`appo index build ...`: build the BM25 index of the local search backend."""

from __future__ import annotations

import argparse
import sys

from appo.tools.search_backends import build_index, read_corpus


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appo index", description="Search indexes for the local backend.")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build a BM25 index from a JSONL corpus of {id, title, text}")
    build.add_argument("--corpus", required=True, help="JSONL file, one document per line")
    build.add_argument("--out", required=True, help="output directory (use it as tools.search.index_dir)")
    args = parser.parse_args(argv)
    try:
        docs = read_corpus(args.corpus)
        out = build_index(docs, args.out)
    except (ValueError, OSError) as e:
        print(f"appo index: {e}", file=sys.stderr)
        return 2
    print(f"indexed {len(docs)} documents into {out} (use tools.search.backend=local tools.search.index_dir={out})")
    return 0
