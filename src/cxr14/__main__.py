"""`cxr14` command line (console script and `python -m cxr14`)."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("cxr14: not built yet")


if __name__ == "__main__":
    main()
